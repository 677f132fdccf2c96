"""Benchmarks: Table 1's LU-Net beside RealNVP, the micro benchmark, the peers benchmark (LU-Net
beside zuko's flows at equal budgets) and its tables."""
