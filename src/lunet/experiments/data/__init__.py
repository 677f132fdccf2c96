"""Data: MNIST and Fashion-MNIST from their IDX files, the 2-D mixture, files of table rows, the
rules for a table's columns and contexts, and the preprocessing of images (dequantisation,
logit, bits/dim)."""
