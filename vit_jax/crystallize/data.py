"""Text for the study: sources, tokenisation, and the non-overlapping blocks perplexity uses.

Sources (`config.text.source`): `pydoc` (the topics shipped with Python in
pydoc_data, so the embedded default needs no download), `file` (a local UTF-8
file) or `wikitext103` (HF datasets, when installed and the data is cached).
The small offline model reads bytes (vocabulary 256); a pretrained GPT-2 reads
its own BPE tokenizer's ids.
"""
import os

import numpy as np

SOURCES = ('pydoc', 'file', 'wikitext103')
HELD_OUT = 0.1   # the last 10% of the pydoc text: never seen by the small model


def pydoc_text() -> str:
  from pydoc_data import topics
  return '\n\n'.join(topics.topics[k] for k in sorted(topics.topics))


def pydoc_split() -> tuple[bytes, bytes]:
  """(train, held-out) bytes of the pydoc topics, split at a fixed fraction."""
  data = pydoc_text().encode('utf-8')
  cut = int(len(data) * (1 - HELD_OUT))
  return data[:cut], data[cut:]


def study_text(text_cfg) -> str:
  """The text whose perplexity the study measures.

  With `drop_empty_lines` (seed 003), lines holding only white space are left out and
  the rest joined by blank lines: wikitext's rows become "\n\n".join(t for t in rows
  if t.strip()), as seed 003 builds its text.
  """
  if text_cfg.source == 'pydoc':
    text = pydoc_split()[1].decode('utf-8', errors='replace')
  elif text_cfg.source == 'file':
    with open(text_cfg.path, encoding='utf-8', errors='replace') as f:
      text = f.read()
  else:
    import datasets  # optional: checked by preflight
    rows = datasets.load_dataset('wikitext', 'wikitext-103-raw-v1', split=text_cfg.split)
    if text_cfg.drop_empty_lines:
      return '\n\n'.join(t for t in rows['text'] if t.strip())
    return '\n\n'.join(rows['text'])   # the join HF's perplexity guide uses
  if text_cfg.drop_empty_lines:
    return '\n\n'.join(t for t in text.split('\n') if t.strip())
  return text


def byte_ids(text: str | bytes) -> np.ndarray:
  data = text.encode('utf-8') if isinstance(text, str) else text
  return np.frombuffer(data, np.uint8).astype(np.int32)


def text_size(text_cfg) -> int:
  """Bytes of the study text, cheap enough for preflight (wikitext: unknown, -1)."""
  if text_cfg.source == 'pydoc':
    return len(pydoc_split()[1])
  if text_cfg.source == 'file':
    return os.path.getsize(text_cfg.path)
  return -1


def blocks(ids: np.ndarray, seq_len: int) -> np.ndarray:
  """Non-overlapping blocks of seq_len tokens; the incomplete tail is dropped."""
  n = len(ids) // seq_len
  return np.asarray(ids[:n * seq_len], np.int32).reshape(n, seq_len)


def split_blocks(all_blocks: np.ndarray, calib_blocks: int, eval_blocks: int,
                 calib_in_scored: bool = False):
  """(calibration blocks, scored blocks).

  Held out (the default): the first calib_blocks calibrate the bases and the next
  eval_blocks (0 = all the rest) are scored, so the bases never see a scored token.
  calib_in_scored (seed 003): the first eval_blocks (0 = all) are scored and the first
  calib_blocks of them also calibrate.
  """
  if calib_in_scored:
    evals = all_blocks if eval_blocks == 0 else all_blocks[:eval_blocks]
    return evals[:calib_blocks], evals
  calib = all_blocks[:calib_blocks]
  rest = all_blocks[calib_blocks:]
  return calib, (rest if eval_blocks == 0 else rest[:eval_blocks])


def check_block_count(n_blocks: int, n_tokens: int, seq_len: int, calib_blocks: int,
                      unit: str = 'tokens', calib_in_scored: bool = False) -> None:
  if n_tokens < seq_len:
    raise ValueError(f'the text has {n_tokens} {unit}, shorter than one block of '
                     f'seq_len={seq_len}')
  needed = calib_blocks if calib_in_scored else calib_blocks + 1
  if n_blocks < needed:
    raise ValueError(f'the text gives {n_blocks} blocks of seq_len={seq_len}; the study needs '
                     f'{needed} to calibrate (study.calib_blocks={calib_blocks}) and evaluate')
