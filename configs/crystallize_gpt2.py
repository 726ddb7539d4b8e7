r"""Seed 003: is GPT-2's deep attention nearly crystalline (top-1 + a low-rank residual)?

  python -m vit_jax.main --config configs/crystallize_gpt2.py --workdir runs/crys
  python -m vit_jax.main --config configs/crystallize_gpt2.py:quick --workdir runs/crys_quick

'' = pretrained GPT-2 small (from the HF cache or --config.gpt2.weights=DIR) on
the wikitext-103 test split; 'quick' = the embedded default, a small byte-level
GPT-2 trained here on pydoc_data.topics, scored on its held-out last 10%.
"""
import ml_collections

from vit_jax import config_lib


def get_config(arg=None):
  arg = config_lib.check_arg(arg, 'configs/crystallize_gpt2.py')
  c = ml_collections.ConfigDict()
  c.trainer = 'crystallize'
  c.seed = 0
  c.seq_len = 1024                 # perplexity block length (GPT-2's context)
  c.batch_size = 4                 # blocks per forward pass
  # A directory with config.json + weights (flax msgpack or safetensors, also
  # PyTorch-saved), or a name in the HF cache; '' = the small offline model.
  c.gpt2 = ml_collections.ConfigDict(dict(weights='gpt2'))
  # The small offline model (used when gpt2.weights == ''), cached in workdir/model/.
  c.small = ml_collections.ConfigDict(dict(
      n_layer=4, n_embd=128, n_head=4, train_steps=400, batch_size=16, lr=3e-3,
      warmup_steps=40, weight_decay=0.01, log_every=50))
  # source: pydoc (held-out 10% of pydoc_data.topics) | file (path) | wikitext103 (split)
  c.text = ml_collections.ConfigDict(dict(source='wikitext103', path='', split='test'))
  c.study = ml_collections.ConfigDict(dict(
      layers=(9, 10, 11),          # crystallized layers (seed 003: the deepest three)
      d_r=(1, 2, 4, 8, 16, 32, 64),  # residual ranks swept for model C
      calib_blocks=4,              # blocks for the residual SVD, before the scored ones
      eval_blocks=0,               # scored blocks after them; 0 = all the rest
      variance_threshold=0.9,      # effective dim: smallest r reaching this variance
      recover_target=0.9,          # verdict: smallest d_r recovering this share of the top-1 loss
      depth_sweep=True))           # also top-1 on the deepest k layers, k = 1..n_layer
  if arg == 'quick':
    c.seq_len = 128
    c.batch_size = 16
    c.gpt2.weights = ''
    c.text.source = 'pydoc'
    c.study.update(layers=(2, 3), d_r=(1, 2, 4, 8, 16, 32), calib_blocks=16, eval_blocks=0)
  return c
