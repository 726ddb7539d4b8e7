"""bench peer's summary and its torch side's 3-Augment (the full runs are the benchmark)."""
import json

import numpy as np
from PIL import Image
import pytest

from vit_jax.bench import peer


def test_summary_over_rounds():
  def side(accs, epoch_s, images=6400):
    return {'val_acc1': accs, 'epoch_s': epoch_s, 'images_per_epoch': images}
  rounds = [{'seed': 0, 'ours': side([50.0, 70.0, 60.0], [9.0, 4.0, 4.0]),
             'timm': side([40.0, 65.0], [8.0, 8.0, 6.0])},
            {'seed': 1, 'ours': side([80.0, 75.0], [9.0, 2.0, 6.0]),
             'timm': side([60.0, 70.0], [8.0, 16.0, 16.0])}]
  s = peer.summary(rounds)
  assert s['ours']['best_val_acc1']['mean'] == 75.0
  assert s['ours']['best_val_acc1']['std'] == pytest.approx(np.std([70.0, 80.0], ddof=1))
  assert s['ours']['final_val_acc1']['values'] == [60.0, 75.0]
  # whole-epoch speed: the median epoch after the first (the first compiles)
  assert s['ours']['epoch_images_per_s']['values'] == [1600.0, 1600.0]
  assert s['timm']['epoch_images_per_s']['values'] == [6400 / 7.0, 400.0]
  assert s['speed_ratio_ours_over_timm'] == pytest.approx([1600 * 7 / 6400, 4.0])


def test_three_augment_is_one_of_its_ops():
  """Each output is the grayscale, the solarized (>= 128 inverted) or a blurred image."""
  rng = np.random.default_rng(0)
  img = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
  a = np.asarray(img).astype(int)
  grey = np.asarray(img.convert('L').convert('RGB')).astype(int)
  solar = np.where(a >= 128, 255 - a, a)
  seen = set()
  for _ in range(60):
    out = np.asarray(peer.ThreeAugment()(img)).astype(int)
    if (out == grey).all():
      seen.add('grey')
    elif (out == solar).all():
      seen.add('solarize')
    else:
      assert np.abs(out - a).mean() > 0 and out.shape == a.shape   # a blur changes it
      seen.add('blur')
  assert seen == {'grey', 'solarize', 'blur'}


def test_finished_rounds_are_read_back_only_for_the_same_recipe(tmp_path):
  path = str(tmp_path / 'peer.json')
  now = {'config': 'vanilla:fmnist', 'total_epochs': 20}
  assert peer.finished_rounds(path, now) == {}                       # no file yet
  timm = {'val_acc1': [70.0], 'epoch_s': [60.0], 'images_per_epoch': 59968}
  with open(path, 'w') as f:
    json.dump(dict(now, rounds=[{'seed': 0, 'ours': {}, 'timm': timm},
                                {'seed': 1, 'ours': {}}]), f)      # round 1 stopped mid-way
  assert peer.finished_rounds(path, now) == {0: timm}
  assert peer.finished_rounds(path, dict(now, total_epochs=10)) == {}
  assert peer.finished_rounds('', now) == {}
