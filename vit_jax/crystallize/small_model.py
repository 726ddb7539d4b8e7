"""The models the study runs on: pretrained GPT-2 (a local directory or the HF cache), or a
small byte-level GPT-2 trained here on the pydoc text so that the study runs offline.

The small model is saved with `save_pretrained` in `workdir/model/`; a re-run
loads it through the same `from_pretrained` path a real GPT-2 takes.
"""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

MODEL_DIR = 'model'


def small_shape(small_cfg, seq_len: int) -> dict:
  return dict(vocab_size=256, n_positions=seq_len, n_embd=small_cfg.n_embd,
              n_layer=small_cfg.n_layer, n_head=small_cfg.n_head)


def small_gpt2_config(small_cfg, seq_len: int):
  from transformers import GPT2Config
  return GPT2Config(**small_shape(small_cfg, seq_len), resid_pdrop=0.0, embd_pdrop=0.0,
                    attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)


def shape_fields(config: dict) -> dict:
  return {k: config[k] for k in ('vocab_size', 'n_positions', 'n_embd', 'n_layer', 'n_head')}


def cached_shape(workdir: str) -> dict | None:
  path = os.path.join(workdir, MODEL_DIR, 'config.json')
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return shape_fields(json.load(f))


def load_pretrained(weights: str):
  """FlaxGPT2LMHeadModel from a directory or an HF-cache name; never downloads.

  A safetensors file saved from PyTorch converts to Flax without torch.
  """
  from transformers import FlaxGPT2LMHeadModel
  local = os.path.isdir(weights)
  return FlaxGPT2LMHeadModel.from_pretrained(weights, local_files_only=not local)


def load_tokenizer(weights: str):
  from transformers import AutoTokenizer
  tok = AutoTokenizer.from_pretrained(weights, local_files_only=not os.path.isdir(weights))
  tok.model_max_length = 10**12   # the whole text is tokenised at once, then cut into blocks
  return tok


def _loss_fn(model):
  def loss(params, batch):
    logits = model(batch[:, :-1], params=params, train=False).logits
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()
  return loss


def train_small(small_cfg, train_ids: np.ndarray, seq_len: int, seed: int, log=print):
  """AdamW with warmup + cosine on random windows of the training bytes."""
  from transformers import FlaxGPT2LMHeadModel
  model = FlaxGPT2LMHeadModel(small_gpt2_config(small_cfg, seq_len), seed=seed)
  schedule = optax.warmup_cosine_decay_schedule(0.0, small_cfg.lr, small_cfg.warmup_steps,
                                                small_cfg.train_steps)
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(schedule, weight_decay=small_cfg.weight_decay))
  loss = _loss_fn(model)

  @jax.jit
  def step(params, opt_state, batch):
    value, grads = jax.value_and_grad(loss)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  params = model.params
  opt_state = tx.init(params)
  rng = np.random.default_rng(seed)
  start, running = time.time(), []
  for i in range(1, small_cfg.train_steps + 1):
    offsets = rng.integers(0, len(train_ids) - seq_len - 1, small_cfg.batch_size)
    batch = np.stack([train_ids[o:o + seq_len + 1] for o in offsets])
    params, opt_state, value = step(params, opt_state, jnp.asarray(batch))
    running.append(value)
    if i % small_cfg.log_every == 0 or i == small_cfg.train_steps:
      log(f'small GPT-2 step {i:5d}/{small_cfg.train_steps}: train loss '
          f'{float(np.mean(jax.device_get(running))):.3f} nats/byte, {time.time() - start:.0f} s')
      running = []
  model.params = params
  return model


def small_model(small_cfg, train_ids: np.ndarray, seq_len: int, seed: int, workdir: str,
                log=print):
  """The cached small model in workdir/model/, or a freshly trained one saved there."""
  path = os.path.join(workdir, MODEL_DIR)
  if cached_shape(workdir) is not None:
    log(f'loading the cached small GPT-2 from {path}')
    return load_pretrained(path)
  model = train_small(small_cfg, train_ids, seq_len, seed, log)
  model.save_pretrained(path, params=model.params)
  return model
