"""config.trainer='analyze': plots, analysis.json and analysis.md for one training workdir.

  python -m vit_jax.main --config configs/register.py:quick --workdir runs/q \
      --config.trainer=analyze [--config.analysis.checkpoint=best|latest|EPOCH]
  python -m vit_jax.main --config configs/vanilla.py --workdir runs/deit3_s \
      --config.trainer=analyze --config.init.source=hf-hub:timm/deit3_small_patch16_224.fb_in1k \
      --config.analysis.images=~/pictures

Reads the workdir's metrics.csv, l2_norms/ and one checkpoint; runs the probe
images (the first probe.num_images validation images, the same ones training
measured every epoch, or those of analysis.images) through the model once with
capture=True. With init.source, the model is the imported checkpoint and the
workdir only receives the output (no training history: those fields are null).
"""
import copy
import glob
import os
import re

import jax
import numpy as np

from vit_jax import config_lib
from vit_jax import files
from vit_jax import models
from vit_jax.analysis import analyses
from vit_jax.analysis import plots
from vit_jax.analysis import registers
from vit_jax.data import augment
from vit_jax.data import imagefolder
from vit_jax.data import pipeline
from vit_jax.data import sources
from vit_jax.models import pretrained
from vit_jax.models import token_norms
from vit_jax.models import vit
from vit_jax.train import checkpoint
from vit_jax.train import metrics_io


def check(config, workdir: str) -> int | None:
  """Every bad input in one line before any model runs; returns the epoch to analyse
  (None for an imported model)."""
  if config.model.get('arch', 'vit') != 'vit':   # 'arch' is a field of ConvNet models only
    raise ValueError(f"config.trainer='analyze' studies ViT attention; model.arch="
                     f"{config.model.arch!r} has none (use a ViT config)")
  config_lib.check_ranges(config, (('analysis.num_images', 1, 64),
                                   ('analysis.gate_sparse_below', 0.0, 1.0)))
  config_lib.check_choices(config, (('analysis.weights', tuple(checkpoint.WEIGHTS)),))
  if config.analysis.images:
    imagefolder.ImageListSource(os.path.expanduser(config.analysis.images))
  else:
    sources.check_available(config.dataset)
  imported = pretrained.load(config)
  if imported is not None:   # the workdir is only where the output goes
    files.require_writable(workdir, 'workdir', 'choose another --workdir for the output')
    model = models.build_model(config.model, config.dataset.num_classes, 'float32')
    pretrained.check_fits(config, imported, models.abstract_params(model))
    return None
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'workdir {workdir!r} does not exist; analyze needs a training workdir')
  if not metrics_io.read(os.path.join(workdir, 'metrics.csv')):
    raise FileNotFoundError(f'workdir {workdir!r} has no metrics.csv rows; analyze needs a '
                            f'workdir that finished at least one epoch')
  # analysis.json, analysis.md and plots/ are written at the end: fail now, not after the work.
  files.require_writable(workdir, 'workdir', 'analyze writes analysis.json, analysis.md and '
                         'plots/ there', also=['plots'])
  epoch = checkpoint.select_step(workdir, config.analysis.checkpoint, 'analysis.checkpoint')
  model = models.build_model(config.model, config.dataset.num_classes, 'float32')
  step_dir = checkpoint.epoch_dir(workdir, epoch)
  checkpoint.require_model(step_dir, model,
                           f'checkpoint {step_dir!r} was made with another model than this config')
  checkpoint.require_weights(step_dir, config.analysis.weights, 'analysis.weights')
  return epoch


def epoch_norms(workdir: str, sub: str = '') -> dict:
  """{epoch: array} of the per-epoch probe norms saved during training."""
  out = {}
  for path in glob.glob(os.path.join(workdir, 'l2_norms', sub, 'epoch*.npy')):
    m = re.fullmatch(r'epoch(\d+)\.npy', os.path.basename(path))
    if m:
      out[int(m.group(1))] = np.load(path)
  return out


def capture(config, params, images: np.ndarray) -> dict:
  """One deterministic forward pass returning every intermediate, and under 'norms' the
  patch-token norms that training records for the probe images, as numpy."""
  model = models.build_model(config.model, config.dataset.num_classes, 'float32')

  def fwd(p, x):
    _, out = model.apply({'params': p}, augment.normalize(x, config.dataset), capture=True)
    return {**out, 'norms': token_norms.patch_token_norms(out)}

  return jax.device_get(jax.jit(fwd)(params, images))


def load_params(config, step_dir: str):
  model = models.build_model(config.model, config.dataset.num_classes, 'float32')
  abstract = models.abstract_params(model)
  return jax.tree.map(lambda a, p: np.asarray(p, a.dtype), abstract,
                      checkpoint.restore_params(step_dir, config.analysis.weights))


def probe_batch(config) -> tuple[np.ndarray, np.ndarray | None]:
  """(images, labels) of the probe batch training measured (pipeline.probe_batch of the
  validation split), or (images, None) of analysis.images' first ones, centre-cropped to
  model.image_size as ImageFolder data."""
  n = config.probe.num_images
  if config.analysis.images:
    source = imagefolder.ImageListSource(os.path.expanduser(config.analysis.images))
    size = config.model.image_size
  else:
    source, size = sources.get(config.dataset, 'val'), sources.eval_crop(config.dataset)
  batch = pipeline.probe_batch(source, n, size, config.dataset.eval_crop_ratio)
  pipeline.report_unreadable('analysis', 'left out', batch['unreadable'])
  return batch['image'], None if config.analysis.images else batch['label']


def probe_images(config) -> np.ndarray:
  return probe_batch(config)[0]


def top1(config, params, images: np.ndarray, labels: np.ndarray) -> float:
  """Top-1 (%) of the model on the probe images."""
  model = models.build_model(config.model, config.dataset.num_classes, 'float32')
  logits = jax.jit(lambda p, x: model.apply({'params': p}, augment.normalize(
      x, config.dataset))[0])(params, images)
  return float(100.0 * np.mean(np.argmax(np.asarray(logits), -1) == labels))


def make_capture(config, params, images: np.ndarray, labels: np.ndarray | None,
                 workdir: str | None) -> analyses.Capture:
  """The captured forward pass of the probe images; with a training workdir, the
  per-epoch norms it saved too. `labels` None: top-1 is not reported."""
  out = capture(config, params, images)
  return analyses.Capture(
      config=config, images=images, layout=vit.token_layout(config.model),
      attn=[np.asarray(a) for a in out['attn']], blocks=out['blocks'], gates=out['gates'],
      layer_norms=out['norms']['layers'], output_norms=out['norms']['output'],
      per_epoch=epoch_norms(workdir) if workdir else {},
      per_epoch_layers=epoch_norms(workdir, 'layers') if workdir else {},
      embed=out['embed'], mlp=out['mlp'], params=params,
      apply=registers.model_pass(config, params), labels=labels)


def summarize(config, workdir: str, epoch: int | None) -> tuple[dict, list]:
  """(the JSON summary, [(plot file, figure)]) of every analysis in analyses.ANALYSES;
  epoch None: the imported model of init.source."""
  imported = pretrained.load(config)
  if imported is not None:
    return summarize_imported(config, workdir, imported)
  step_dir = checkpoint.epoch_dir(workdir, epoch)
  params = load_params(config, step_dir)
  images, labels = probe_batch(config)
  results, figures = analyses.run_all(make_capture(config, params, images, labels, workdir))
  rows = metrics_io.read(os.path.join(workdir, 'metrics.csv'))
  best = max(rows, key=lambda r: float(r['val_acc1']))
  at_epoch = next((r for r in rows if int(r['epoch']) == epoch), None)
  summary = {
      'workdir': os.path.abspath(workdir),
      'checkpoint_epoch': epoch,
      'num_params': models.count_params(params),
      'val_acc1_at_checkpoint': float(at_epoch['val_acc1']) if at_epoch else None,
      'best_val_acc1': float(best['val_acc1']), 'best_epoch': int(best['epoch']),
      'epochs_trained': int(rows[-1]['epoch']),
      'probe_images': int(images.shape[0]),
      'outlier_rule': {k: config.probe[k] for k in ('outlier_rule', 'outlier_factor',
                                                    'outlier_threshold')},
      **results,
  }
  return summary, figures


def summarize_imported(config, workdir: str, imported) -> tuple[dict, list]:
  """summarize() of an imported model: its own head (its class count), no training history
  (those fields null), top-1 on the probe images where they have labels of its classes."""
  classes_match = imported.num_classes == config.dataset.num_classes
  config = copy.deepcopy(config)
  config.dataset.num_classes = imported.num_classes   # the model as it was saved
  images, labels = probe_batch(config)
  classes_match = classes_match and labels is not None
  results, figures = analyses.run_all(make_capture(
      config, imported.params, images, labels if classes_match else None, workdir=None))
  summary = {
      'workdir': os.path.abspath(workdir),
      'imported': {'source': imported.source, 'family': imported.family,
                   'num_classes': imported.num_classes, 'model': dict(imported.model)},
      'images': (os.path.abspath(os.path.expanduser(config.analysis.images))
                 if config.analysis.images else f'{config.dataset.name} validation split'),
      'checkpoint_epoch': None,
      'num_params': models.count_params(imported.params),
      'val_acc1_at_checkpoint': None, 'best_val_acc1': None, 'best_epoch': None,
      'epochs_trained': None,
      'probe_top1': top1(config, imported.params, images, labels) if classes_match else None,
      'probe_images': int(images.shape[0]),
      'outlier_rule': {k: config.probe[k] for k in ('outlier_rule', 'outlier_factor',
                                                    'outlier_threshold')},
      **results,
  }
  return summary, figures


def save_plots(workdir: str, figures: list) -> list[str]:
  return [os.path.relpath(plots.save(fig, os.path.join(workdir, 'plots', name)), workdir)
          for name, fig in figures]


def provenance(summary: dict) -> str:
  """Where the analysed parameters come from: a workdir's epoch, or an imported checkpoint."""
  if summary.get('imported'):
    i, acc = summary['imported'], summary['probe_top1']
    top1 = f"; top-1 {acc:.2f}% on them" if acc is not None else ''
    return (f"imported: {i['source']} ({i['family']}); {summary['num_params']:,} parameters; "
            f"{summary['probe_images']} probe images from {summary['images']}{top1}.")
  acc = summary['val_acc1_at_checkpoint']
  return (f"Checkpoint: epoch {summary['checkpoint_epoch']} of {summary['epochs_trained']} "
          f"(val top-1 {'%.2f%%' % acc if acc is not None else 'not in metrics.csv'}; best "
          f"{summary['best_val_acc1']:.2f}% at epoch {summary['best_epoch']}); "
          f"{summary['num_params']:,} parameters; {summary['probe_images']} probe images.")


def _or_dash(value, spec: str) -> str:
  """A table cell: '-' for a quantity the model does not have (None)."""
  return '-' if value is None else format(value, spec)


def report(summary: dict) -> str:
  """The short markdown report."""
  o = summary['output_norms']
  lines = [
      f"# Analysis of {summary['workdir']}", '', provenance(summary), '',
      f"Output patch-token norms: mean {o['l2_norm_mean']:.3f}, std {o['l2_norm_std']:.3f}, "
      f"max {o['l2_norm_max']:.3f} ({o['max_over_median']:.2f}x the median); outlier ratio "
      f"{o['l2_outlier_ratio']:.4f} under {summary['outlier_rule']}.", '']
  if summary['gates']:
    g = summary['gates']
    lines += [f"Gates: mean {g['mean']:.3f}, sparsity {g['sparsity']:.3f} "
              f"(share of gate values below {g['sparse_below']}).", '']
  gate_cols = ' gate mean | gate sparsity |' if summary['gates'] else ''
  lines += ['| block | norm mean | outlier ratio | max/median norm | sink share | sink | '
            'on cls | on registers | max abs x |' + gate_cols,
            '|---' * (9 + (2 if summary['gates'] else 0)) + '|']
  for r in summary['layers']:
    gate = f" {r['gate_mean']:.3f} | {r['gate_sparsity']:.3f} |" if summary['gates'] else ''
    lines.append(f"| {r['block']} | {r['l2_norm_mean']:.2f} | {r['l2_outlier_ratio']:.4f} | "
                 f"{r['max_over_median']:.2f} | {r['sink_share']:.3f} | {r['sink_kind']} | "
                 f"{r['cls_share']:.3f} | {_or_dash(r['register_share'], '.3f')} | "
                 f"{r['act_max_abs']:.1f} |" + gate)
  if summary['layers'] and 'norm_cls' in summary['layers'][0]:
    regs = summary['layers'][0]['norm_register_max'] is not None
    lines += ['', 'Token norms in the residual stream after each block (mean over the images):',
              '', '| block | cls | patch median | patch max |'
              + (' register mean | register max |' if regs else ''),
              '|---' * (4 + 2 * regs) + '|']
    for r in summary['layers']:
      lines.append(f"| {r['block']} | {r['norm_cls']:.2f} | {r['norm_patch_median']:.2f} | "
                   f"{r['norm_patch_max']:.2f} |" + (f" {r['norm_register_mean']:.2f} | "
                                                     f"{r['norm_register_max']:.2f} |"
                                                     if regs else ''))
  lines += ['', 'A sink is a token whose attention, averaged over heads and queries, exceeds '
            'max(analysis.sink_epsilon, analysis.sink_factor / T); the sink column names '
            "its kind when the layer has one in at least half of the images, and says 'none' "
            'otherwise.', '']
  lines += _toolkit_report(summary)
  lines += ['', 'Plots: ' + ', '.join(f'[{p}]({p})' for p in summary['plots']), '']
  return '\n'.join(lines)


def _toolkit_report(summary: dict) -> list[str]:
  """The artifact toolkit's lines of analysis.md (outliers, sinks, rollout, defects, registers)."""
  layers = summary['layers']
  lines = []
  if 'sink_rate' in summary:
    rate = ', '.join(f'to {k} {v:.3f}' for k, v in summary['sink_rate'].items())
    lines += [f'Sink rate (share of (layer, head) pairs whose mean attention to one token '
              f'exceeds the sink epsilon; Gu et al. 2025): {rate}.', '']
  if layers and 'flat_base' in layers[0]:
    where = '; '.join(f"block {r['block']}: " + ('no outlier' if r['flat_outliers'] is None
                                                  else f"{r['flat_outliers']:.2f}")
                      for r in layers)
    lines += ['High-norm patch tokens on flat patches (pixel std at or below the image\'s '
              f"median; Darcet et al. 2024 found the artifacts in such background), against "
              f"the {layers[0]['flat_base']:.2f} of all patch tokens that are flat: {where}.", '']
  if 'rollout' in summary:
    r = summary['rollout']
    lines += ['Attention rollout of cls (Abnar & Zuidema 2020), share from: ' + ', '.join(
        f'{k} {v:.3f}' for k, v in r.items() if k != 'map_max_over_uniform')
              + f"; the patch map's peak is {r['map_max_over_uniform']:.2f}x uniform.", '']
  if layers and 'outlier_kurtosis' in layers[0]:
    has_defect = 'defect_sigma1' in layers[0]
    lines += ['| block | max abs x | kurtosis | top abs x (image, token kind index, channel): '
              'x / median | entropy (nats) / log T |'
              + (' defect sigma1 | cos high-norm | cos other |' if has_defect else ''),
              '|---' * (5 + (3 if has_defect else 0)) + '|']
    for r in layers:
      top = '; '.join(f"({t['image']}, {t['kind']} {t['token']}, ch {t['channel']}): "
                      f"{t['over_median']:.1f}" for t in r['outlier_top'])
      row = (f"| {r['block']} | {r['outlier_max_abs']:.2f} | {r['outlier_kurtosis']:.2f} | "
             f"{top} | {r['entropy_mean']:.2f} / {r['entropy_uniform']:.2f} |")
      if has_defect:
        row += (f" {r['defect_sigma1']:.3g} | {_or_dash(r['defect_cos_high_norm'], '.3f')} | "
                f"{_or_dash(r['defect_cos_normal'], '.3f')} |")
      lines.append(row)
    lines.append('')
  t = summary.get('test_time_registers')
  if t:
    if 'skipped' in t:
      lines += [f"Test-time registers (Jiang et al. 2025): skipped, {t['skipped']}.", '']
    else:
      b, a = t['output_norms_before'], t['output_norms_after']
      neurons = ', '.join(f"{n['block']}:{n['neuron']}" for n in t['neurons'])
      top1 = (f"; top-1 {t['top1_before']:.3f} -> {t['top1_after']:.3f}"
              if 'top1_before' in t else '')
      lines += [f'Test-time registers (Jiang et al. 2025): register neurons (block:neuron) '
                f'{neurons}; output patch norms max/median {b["max_over_median"]:.2f} -> '
                f'{a["max_over_median"]:.2f}; top-1 unchanged on {t["top1_unchanged"]:.3f} '
                f'of the images{top1}.', '']
  return lines


def analyze(config, workdir: str) -> dict:
  epoch = check(config, workdir)
  if epoch is None:   # an imported model: the workdir is the output folder
    print(pretrained.describe(config, pretrained.load(config)), flush=True)
    os.makedirs(workdir, exist_ok=True)
  summary, figures = summarize(config, workdir, epoch)
  summary['plots'] = save_plots(workdir, figures)
  files.write_json(os.path.join(workdir, 'analysis.json'), summary)
  files.write_text(os.path.join(workdir, 'analysis.md'), report(summary))
  o = summary['output_norms']
  what = f'epoch {epoch}' if epoch is not None else repr(summary['imported']['source'])
  print(f"analysed {what}: outlier ratio {o['l2_outlier_ratio']:.4f}, max/median norm "
        f"{o['max_over_median']:.2f}; wrote {workdir}/analysis.json, analysis.md and "
        f"{len(summary['plots'])} plots", flush=True)
  return summary
