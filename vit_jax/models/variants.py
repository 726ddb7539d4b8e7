"""The ViT variants of the seed-002 study: what each changes in config.model, over the
DeiT-III ViT-S of configs/vanilla.py. The one table that the configs, the benchmark
and the tests read; a fifth variant is a line here and a config file of three lines."""

VARIANTS = {
    'vanilla': {},
    # seed 002 (Darcet et al. 2024): 4 learnable tokens, no position embedding, dropped
    # at the output.
    'register': {'num_registers': 4},
    # seed 002 (Qiu et al. 2025): sigmoid(X W) on the SDPA output, X the pre-normed block
    # input, per head and channel, no bias.
    'sdpa_gated': {'gate': 'g1'},
    # seed 002 (Qiu et al. 2025): sigmoid(X W) on V before attention: value-dependent,
    # not query-dependent.
    'value_gated': {'gate': 'g2'},
}


def apply(model_cfg, name: str):
  """config.model with variant `name`'s changes; returns it."""
  if name not in VARIANTS:
    raise ValueError(f'model variant {name!r} is not one of {tuple(VARIANTS)}')
  model_cfg.update(VARIANTS[name])
  return model_cfg
