"""Algorithms the passes use: sparsity patterns and masks, SparseGPT's reconstruction, the router MLP."""
