"""Benchmarks that print ratios measured in one run (`python -m vit_jax.bench NAME`)."""
