"""The fast paths' kernels: blocked triangular products (the training path), frozen affine
maps (a frozen flow's products) and the activation's fused passes. Tuned by arguments
(``LULinear(block_leaf=...)``, ``LUNet.frozen(split_below_rows=..., split_min_bytes=...)``),
imported by the transforms and frozen flows, never the reverse."""
