"""Seed 003 on transformers' FlaxGPT2: top-1, full and top-1 + low-rank residual attention."""
