r"""A trained workdir's checkpoint as a timm / Hugging Face hub folder.

  python -m vit_jax.export --workdir W --out DIR [--checkpoint latest|best|N]

reads W/config.json (written by the training loop) for the model and the evaluation's
preprocessing, restores the chosen checkpoint's params (best: the highest val_acc1, as
the analysis picks it) and writes DIR with model.safetensors + config.json
(vit_jax/models/hub_export.export_timm), which `timm.create_model('local-dir:DIR',
pretrained=True)` builds; its pretrained_cfg holds the mean, std, crop_pct, interpolation
and input size the workdir evaluated with, so timm's resolve_data_config + create_transform
preprocess as our evaluation did. Bad input (no such workdir or checkpoint, a variant timm
cannot express, an existing DIR) is one `error:` line, exit 2, before anything is written.
"""
import argparse
import json
import os

from vit_jax import exits


def export(workdir: str, out: str, spec: str = 'latest') -> str:
  """Every check first (config, checkpoint, exportability, its params' shapes), then the write."""
  import ml_collections
  from vit_jax import models
  from vit_jax.data import pipeline
  from vit_jax.models import hub_export
  from vit_jax.train import checkpoint
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} does not exist; --workdir must be a training workdir '
                            f'(the loop writes its config.json there)')
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  num_classes = int(config.dataset.num_classes)
  hub_export.check_exportable(config.model, num_classes)
  preprocessing = pipeline.eval_preprocessing(config.dataset)
  where = checkpoint.epoch_dir(workdir, checkpoint.select_step(workdir, spec, '--checkpoint'))
  model = models.build_model(config.model, num_classes, 'float32')
  checkpoint.require_model(where, model, f'checkpoint {where!r} does not hold the model of '
                                         f'{path}')
  params = checkpoint.restore_params(where)
  return hub_export.export_timm(params, config.model.to_dict(), num_classes, out,
                         preprocessing=preprocessing)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog='python -m vit_jax.export', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True, help='a training workdir')
  parser.add_argument('--out', required=True, help='the folder to write (must not exist)')
  parser.add_argument('--checkpoint', default='latest', help="'latest', 'best' or an epoch")
  args = parser.parse_args(argv)
  try:
    out = export(args.workdir, args.out, args.checkpoint)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    exits.fail(str(e))
  print(out)


if __name__ == '__main__':
  main()
