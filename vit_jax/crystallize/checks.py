"""Preflight for crystallize configs: every bad input is one line, before any model is
loaded or trained (the model's shape is read from config.json alone)."""
import importlib.util
import json
import os

from vit_jax.crystallize import data
from vit_jax.crystallize import small_model

WEIGHT_FILES = ('flax_model.msgpack', 'model.safetensors')
# A GPT-2 BPE tokenizer: tokenizer.json, or the vocab.json + merges.txt pair.
TOKENIZER_FILES = (('tokenizer.json',), ('vocab.json', 'merges.txt'))


def _has_tokenizer(exists) -> bool:
  return any(all(exists(f) for f in files) for files in TOKENIZER_FILES)


def _hub_config(name: str) -> str | None:
  from huggingface_hub import try_to_load_from_cache
  path = try_to_load_from_cache(name, 'config.json')
  return path if isinstance(path, str) else None


def model_shape(config, workdir: str) -> dict:
  """n_layer / n_head / n_embd / n_positions of the model the study will run on."""
  weights = config.gpt2.weights
  if not weights:
    small = config.small
    if small.n_layer < 1 or small.n_head < 1 or small.n_embd % small.n_head:
      raise ValueError(f'small.n_embd={small.n_embd} must be a positive multiple of '
                       f'small.n_head={small.n_head}')
    shape = small_model.small_shape(small, config.seq_len)
    cached = small_model.cached_shape(workdir)
    if cached is not None and cached != shape:
      raise ValueError(f'workdir {workdir!r} caches a small GPT-2 of another shape ({cached}); '
                       f'use a new --workdir')
    if not 0 <= small.warmup_steps < small.train_steps:
      raise ValueError(f'small.warmup_steps={small.warmup_steps} must be in '
                       f'[0, small.train_steps={small.train_steps})')
    return shape
  if os.path.isdir(weights):
    path = os.path.join(weights, 'config.json')
    if not os.path.isfile(path):
      raise FileNotFoundError(f'gpt2.weights={weights!r} has no config.json')
    if not any(os.path.isfile(os.path.join(weights, f)) for f in WEIGHT_FILES):
      raise FileNotFoundError(f'gpt2.weights={weights!r} holds none of {WEIGHT_FILES}')
    exists = lambda f: os.path.isfile(os.path.join(weights, f))
  elif os.sep in weights or weights.startswith('.') or not (path := _hub_config(weights)):
    raise FileNotFoundError(f'gpt2.weights={weights!r} is neither a directory nor a model in '
                            f'the HF cache (nothing is downloaded); use --config.gpt2.weights=DIR '
                            f"or --config.gpt2.weights='' for the small offline model")
  else:
    from huggingface_hub import try_to_load_from_cache
    exists = lambda f: isinstance(try_to_load_from_cache(weights, f), str)
  if not _has_tokenizer(exists):
    raise FileNotFoundError(f'gpt2.weights={weights!r} has no tokenizer (tokenizer.json, or '
                            'vocab.json and merges.txt): the text cannot be tokenised; copy '
                            "GPT-2's tokenizer files beside the weights")
  with open(path) as f:
    return small_model.shape_fields(json.load(f))


def check_text(config) -> None:
  text = config.text
  if text.source not in data.SOURCES:
    raise ValueError(f'text.source={text.source!r} is not one of {data.SOURCES}')
  if text.source == 'file' and not os.path.isfile(text.path):
    raise FileNotFoundError(f'text.path={text.path!r} does not exist')
  if text.source == 'wikitext103' and importlib.util.find_spec('datasets') is None:
    raise ValueError("text.source='wikitext103' needs the datasets package (pip install "
                     "datasets); or use --config.text.source=file --config.text.path=FILE")
  size = data.text_size(text)
  if size < 0:
    return
  if not config.gpt2.weights:   # bytes are the tokens: the block count is exact
    data.check_block_count(size // config.seq_len, size, config.seq_len,
                           config.study.calib_blocks, 'bytes', config.study.calib_in_scored)
  elif size < config.seq_len:   # a BPE token spans at least one byte
    raise ValueError(f'the text has {size} bytes, shorter than one block of '
                     f'seq_len={config.seq_len} tokens')


def check(config, workdir: str) -> None:
  shape = model_shape(config, workdir)
  n_layer, d_head = shape['n_layer'], shape['n_embd'] // shape['n_head']
  study = config.study
  if not 2 <= config.seq_len <= shape['n_positions']:
    raise ValueError(f'seq_len={config.seq_len} is outside [2, {shape["n_positions"]}] '
                     f'(the model\'s n_positions)')
  if config.batch_size < 1:
    raise ValueError(f'batch_size={config.batch_size} must be positive')
  if not study.layers or len(set(study.layers)) != len(study.layers):
    raise ValueError(f'study.layers={tuple(study.layers)} must be distinct layer indices')
  for layer in study.layers:
    if not 0 <= layer < n_layer:
      raise ValueError(f'study.layers has {layer}, outside [0, {n_layer - 1}] for the '
                       f'{n_layer}-layer model')
  for d_r in study.d_r:
    if not 1 <= d_r <= d_head:
      raise ValueError(f'study.d_r has {d_r}, outside [1, {d_head}]: the head dimension is '
                       f'{d_head} (n_embd {shape["n_embd"]} / n_head {shape["n_head"]})')
  if not study.d_r:
    raise ValueError('study.d_r is empty; give at least one residual rank')
  if not 0 < study.variance_threshold <= 1 or not 0 < study.recover_target <= 1:
    raise ValueError('study.variance_threshold and study.recover_target must be in (0, 1]')
  if study.calib_blocks < 1 or study.eval_blocks < 0:
    raise ValueError(f'study.calib_blocks={study.calib_blocks} must be >= 1 and '
                     f'study.eval_blocks={study.eval_blocks} >= 0')
  check_text(config)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f'workdir={workdir!r} exists and is not a directory')
