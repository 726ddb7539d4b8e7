"""Sources and grain pipelines on the embedded digits and on a missing tfds data set."""
import ml_collections
import numpy as np
import pytest
from sklearn.datasets import load_digits

from vit_jax.data import pipeline
from vit_jax.data import sources


def test_digits_read_without_sklearn_equal_sklearns():
  images, labels = sources.load_digits()
  raw = load_digits()
  np.testing.assert_array_equal(images, raw.images)
  np.testing.assert_array_equal(labels, raw.target)


def test_digits_fixed_disjoint_split():
  train, val = sources.digits('train', 16), sources.digits('val', 16)
  assert (len(train), len(val)) == (1500, 297)
  item = train[0]
  assert item['image'].shape == (16, 16, 3) and item['image'].dtype == np.uint8
  # Same split every time, and no image is in both.
  again = sources.digits('val', 16)
  np.testing.assert_array_equal(val.images, again.images)
  # Together the two splits are exactly the 1,797 images, each used once.
  raw = load_digits()
  def keys(images_8x8):
    return sorted(np.asarray(im, np.uint8).tobytes() for im in images_8x8)
  both = np.concatenate([train.images, val.images])[:, ::2, ::2, 0].astype(np.float64)
  assert keys(np.round(both * 16 / 255)) == keys(raw.images)
  # Upsampling is nearest-neighbour: every 2x2 block is one source pixel, channels equal.
  img = train[3]['image']
  assert (img[::2, ::2] == img[1::2, 1::2]).all() and (img[..., 0] == img[..., 2]).all()


def _cfg(**kw):
  return ml_collections.ConfigDict(dict(name='digits', random_crop_padding=2,
                                        crop_padding_mode='reflect', repeated_aug=1) | kw)


def test_train_stream_batches_and_reshuffles():
  src = sources.digits('train', 8)
  it = pipeline.TrainStream(src, _cfg(), 100, seed=3).batches(0)
  batches = [next(it) for _ in range(30)]          # 2 epochs of 15 batches
  assert batches[0]['image'].shape == (100, 8, 8, 3) and batches[0]['label'].dtype == np.int32
  first, second = (np.concatenate([b['label'] for b in batches[i:i + 15]]) for i in (0, 15))
  np.testing.assert_array_equal(np.sort(first), np.sort(src.labels))  # each image once per epoch
  assert not np.array_equal(first, second)                            # new order each epoch
  again = next(pipeline.TrainStream(src, _cfg(), 100, seed=3).batches(0))
  np.testing.assert_array_equal(again['image'], batches[0]['image'])  # seeded


def test_stream_is_the_same_for_any_worker_count_and_resumes_at_any_step():
  """The order and crops are functions of (seed, step): 0, 2 and 3 loader workers give the
  same batches, and a stream started at step k gives batch k on."""
  src = sources.digits('train', 8)
  stream = pipeline.TrainStream(src, _cfg(), 50, seed=7)
  ref = stream.batches(0)
  expected = [next(ref) for _ in range(36)]                 # 1.2 epochs
  labels = np.concatenate([b['label'] for b in expected[:30]])
  np.testing.assert_array_equal(np.sort(labels), np.sort(src.labels))   # each image once
  for workers in (2, 3):
    it = stream.batches(0, workers)
    for want in expected[:8]:
      got = next(it)
      np.testing.assert_array_equal(got['image'], want['image'])
      np.testing.assert_array_equal(got['label'], want['label'])
  resumed = stream.batches(28, workers=2)                   # across the epoch boundary
  for want in expected[28:36]:
    np.testing.assert_array_equal(next(resumed)['image'], want['image'])


@pytest.mark.parametrize('repeats', [1, 3])
def test_processes_read_their_rows_of_the_one_process_batches(repeats):
  """Every process's rows, crops included, are the rows of the batch one process reads."""
  src = sources.digits('train', 8)
  cfg = _cfg(repeated_aug=repeats)
  one = pipeline.TrainStream(src, cfg, 24, seed=5, process_index=0, process_count=1)
  parts = [pipeline.TrainStream(src, cfg, 24, seed=5, process_index=r, process_count=4)
           for r in range(4)]
  for step in (0, 7, 80):                                   # 62 steps per epoch
    whole = one.load(step)
    for r, part in enumerate(parts):
      got = part.load(step)
      np.testing.assert_array_equal(got['image'], whole['image'][part.rows])
      np.testing.assert_array_equal(got['label'], whole['label'][part.rows])


def test_eval_batches_pad_and_mask():
  src = sources.digits('val', 8)
  batches = list(pipeline.eval_batches(src, 128))
  assert [len(b['label']) for b in batches] == [128, 128, 128]
  assert sum(b['mask'].sum() for b in batches) == 297
  np.testing.assert_array_equal(batches[-1]['mask'], np.arange(128) < 297 - 256)


def test_unprepared_tfds_dataset_is_one_line_with_the_command(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    sources.check_tfds_prepared('cifar100', str(tmp_path))
  msg = str(e.value)
  assert '\n' not in msg and "'cifar100' is not prepared" in msg
  assert "download_and_prepare(file_format='array_record')" in msg


def test_digits_image_size_must_be_multiple_of_8():
  with pytest.raises(ValueError, match='dataset.image_size=12 for digits must be a multiple of 8'):
    sources.digits('train', 12)
