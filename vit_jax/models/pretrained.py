"""Starting from a pretrained checkpoint (config.init): its architecture, its parameters.

`hub_import.load` reads the checkpoint (timm / Hugging Face layouts) and gives the model's
architecture fields and its parameters at the requested image size. Here they meet a
config: `load` writes the architecture into config.model (the image size, the class
count and the regularisation fields stay the config's), `check_fits` refuses in one
line a config whose model the checkpoint does not fill, and `start_params` gives the
parameters a fresh run starts from (timm's fine-tuning: the head is kept when its class
count is the data set's, re-initialised otherwise).
"""
import os

import flax
import numpy as np

from vit_jax.models import hub_import

# Parameter trees that depend on the number of classes.
HEADS = ('head', 'head_dist')
# dataset fields of the evaluation preprocessing <- the pretrained_cfg key timm reads each from.
PREPROCESSING = {'mean': 'mean', 'std': 'std', 'eval_crop_ratio': 'crop_pct'}
# What evaluation resizes with (pipeline.center_crop); a checkpoint may name another.
INTERPOLATION = 'bicubic'
# Parameters a config can add that no imported checkpoint has: the field that adds them.
_ADDED_BY = (('svd_proj_', 'model.svd_tap_layers'), ('/gate/', 'model.gate'),
             ('head/hidden', 'model.head'), ('head/norm', 'model.head'))
_CACHE: dict = {}


def source(config) -> str:
  """config.init.source ('' = training from scratch)."""
  return config.init.source


def _stamp(path: str):
  """What changes when the checkpoint at `path` is rewritten (None for hf-hub names)."""
  if not os.path.exists(path):
    return None
  if os.path.isdir(path):
    return tuple(sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size)
                        for e in os.scandir(path) if e.is_file()))
  return os.stat(path).st_mtime_ns, os.stat(path).st_size


def _coerce(old, new):
  """`new` as the type of the config field it replaces (ConfigDict fields are typed)."""
  for kind in (bool, int, float, str):
    if isinstance(old, kind):
      return kind(new)
  return new


def keep_command_line(config, overrides) -> None:
  """main: a preprocessing field set on the command line (`overrides`: ml_collections'
  {dotted key: value} of the --config.* flags) stays the config's, as if the config had named
  it in init.keep_preprocessing."""
  if 'init' not in config:
    return
  kept = tuple(config.init.keep_preprocessing)
  config.init.keep_preprocessing = kept + tuple(
      f for f in PREPROCESSING if f'dataset.{f}' in overrides and f not in kept)


def _kept(config) -> tuple:
  kept = tuple(config.init.keep_preprocessing)
  unknown = [f for f in kept if f not in PREPROCESSING]
  if unknown:
    raise ValueError(f'init.keep_preprocessing={kept!r} names {unknown[0]!r}; each must be one '
                     f'of {tuple(PREPROCESSING)}')
  return kept


def load(config):
  """hub_import.Imported of config.init.source at config.model.image_size, or None when unset.

  The checkpoint's architecture fields are written into config.model (every field hub
  reports except image_size), and its preprocessing (pretrained_cfg mean, std, crop_pct)
  into config.dataset, except the fields init.keep_preprocessing keeps. Preflight, the
  training run and the analysis each call this; the checkpoint is read once per process
  (until its files change).
  """
  src = source(config)
  if not src:
    return None
  kept = _kept(config)
  key = (src, int(config.model.image_size), _stamp(src))
  if key not in _CACHE:
    _CACHE.clear()    # one checkpoint at a time: a ViT-g's parameters are gigabytes
    _CACHE[key] = hub_import.load(src, int(config.model.image_size))
  imported = _CACHE[key]
  config.model.update({k: _coerce(config.model[k], v) for k, v in imported.model.items()
                       if k != 'image_size'})
  config.dataset.update({f: _coerce(config.dataset[f], imported.preprocessing[k])
                         for f, k in PREPROCESSING.items()
                         if f not in kept and k in imported.preprocessing})
  return imported


def preprocessing_note(config, imported) -> str:
  """Which preprocessing the run uses and whose it is: 'preprocessing: mean=..., std=... from
  the checkpoint; eval_crop_ratio=... from the config (kept)'."""
  kept, groups = _kept(config), {}
  for f, k in PREPROCESSING.items():
    where = ('the config (kept)' if f in kept else 'the checkpoint' if k in imported.preprocessing
             else 'the config (the checkpoint names none)')
    value = config.dataset[f]
    groups.setdefault(where, []).append(
        f'{f}={tuple(value) if isinstance(value, (list, tuple)) else value}')
  note = '; '.join(f'{", ".join(items)} from {where}' for where, items in groups.items())
  other = imported.preprocessing.get('interpolation', INTERPOLATION)
  if other != INTERPOLATION:
    note += f' (its interpolation {other!r} is not followed: evaluation resizes {INTERPOLATION})'
  return f'preprocessing: {note}'


def describe(config, imported) -> str:
  """One line: the checkpoint, the architecture it gave config.model and the preprocessing."""
  arch = ', '.join(f'{k}={v}' for k, v in imported.model.items() if k != 'image_size')
  return (f'init.source={imported.source!r} ({imported.family}, {imported.num_classes} '
          f'classes, native {imported.model["image_size"]}px, used at '
          f'{config.model.image_size}px): {arch}; {preprocessing_note(config, imported)}')


def keeps_head(config, imported) -> bool:
  """timm's rule: the head is loaded when its class count is the data set's."""
  return bool(config.init.keep_head) and imported.num_classes == config.dataset.num_classes


def _flat(tree) -> dict:
  return flax.traverse_util.flatten_dict(tree, sep='/')


def start_params(config, imported) -> dict | None:
  """{param path: array} of the imported parameters a fresh run starts from: every one,
  the head(s) only when kept (the others keep the model's own init). None without one."""
  if imported is None:
    return None
  keep = keeps_head(config, imported)
  return {k: np.asarray(v) for k, v in _flat(imported.params).items()
          if keep or k.split('/')[0] not in HEADS}


def head_note(config, imported) -> str:
  if keeps_head(config, imported):
    return f'head kept ({imported.num_classes} classes)'
  why = ('init.keep_head=False' if imported.num_classes == config.dataset.num_classes else
         f'{imported.num_classes} classes, dataset.num_classes={config.dataset.num_classes}')
  return f'head re-initialised ({why})'


def check_fits(config, imported, abstract_params) -> None:
  """Every parameter of the config's model (abstract_params) is in the import with its shape
  (the head only where it is kept), and every imported one has a place; one line naming
  the first that does not."""
  src = imported.source
  want = {k: tuple(v.shape) for k, v in _flat(abstract_params).items()}
  keep = keeps_head(config, imported)
  got = {k: tuple(np.shape(v)) for k, v in _flat(imported.params).items()
         if keep or k.split('/')[0] not in HEADS}
  want = {k: v for k, v in want.items() if keep or k.split('/')[0] not in HEADS}
  for path, shape in want.items():   # missing ones first: they say why shapes differ
    if path not in got:
      field = next((f for p, f in _ADDED_BY if p in f'/{path}'), None)
      why = (f'; it comes from this config\'s {field}, which the checkpoint lacks' if field
             else '')
      raise ValueError(f'init.source={src!r} has no parameter {path} {shape} for this '
                       f"config's model{why}")
  for path, shape in want.items():
    if got[path] != shape:
      raise ValueError(f'init.source={src!r}: parameter {path} is {got[path]} in the '
                       f"checkpoint but {shape} in this config's model")
  extra = [p for p in got if p not in want]
  if extra:
    raise ValueError(f'init.source={src!r}: parameter {extra[0]} {got[extra[0]]} has no place '
                     f"in this config's model")
