"""config.trainer == 'crystallize': text -> blocks -> model -> study -> table, JSON, plots."""
import os
import time

import numpy as np

from vit_jax import files
from vit_jax.crystallize import data
from vit_jax.crystallize import report
from vit_jax.crystallize import small_model
from vit_jax.crystallize import study


def _tokens(config) -> np.ndarray:
  text = data.study_text(config.text)
  if not config.gpt2.weights:
    return data.byte_ids(text)
  return np.asarray(small_model.load_tokenizer(config.gpt2.weights)(text)['input_ids'], np.int32)


def describe(config) -> tuple[str, str]:
  """(model, text) labels for the report; the small model is never called GPT-2 itself."""
  s = config.small
  model = (f'small offline byte-level GPT-2 ({s.n_layer} layers, width {s.n_embd}, '
           f'{s.n_head} heads) trained here on pydoc_data.topics - not pretrained GPT-2'
           if not config.gpt2.weights else f'pretrained GPT-2 from {config.gpt2.weights!r}')
  text = {'pydoc': 'held-out last 10% of pydoc_data.topics (bytes)',
          'file': f'{config.text.path} ({"bytes" if not config.gpt2.weights else "GPT-2 BPE"})',
          'wikitext103': f'wikitext-103-raw-v1 {config.text.split} split (GPT-2 BPE)'
          }[config.text.source]
  return model, text


def run(config, workdir: str, log=print) -> dict:
  start = time.time()
  ids = _tokens(config)
  all_blocks = data.blocks(ids, config.seq_len)
  study_cfg = config.study
  data.check_block_count(len(all_blocks), len(ids), config.seq_len, study_cfg.calib_blocks,
                         calib_in_scored=study_cfg.calib_in_scored)
  calib, evals = data.split_blocks(all_blocks, study_cfg.calib_blocks, study_cfg.eval_blocks,
                                   study_cfg.calib_in_scored)
  os.makedirs(workdir, exist_ok=True)
  files.write_text(os.path.join(workdir, 'config.json'), config.to_json_best_effort(indent=1))
  if config.gpt2.weights:
    model = small_model.load_pretrained(config.gpt2.weights)
  else:
    train_ids = data.byte_ids(data.pydoc_split()[0])
    model = small_model.small_model(config.small, train_ids, config.seq_len, config.seed,
                                    workdir, log)
  result = study.run_study(model, calib, evals, config.study, config.batch_size, log)
  result['model'], result['text'] = describe(config)
  result['wall_seconds'] = time.time() - start
  print(report.table(result))
  report.write_json(result, workdir)
  report.plot(result, workdir)
  log(f'wrote {workdir}/crystallize.json and {workdir}/plots/ ({result["wall_seconds"]:.0f} s)')
  return result
