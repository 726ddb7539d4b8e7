"""grain pipelines: seeded per-epoch shuffling, per-process sharding, batching.

The training iterator is endless (a new shuffle every epoch); its state goes
into the checkpoint, so a resumed run sees exactly the batches it would have.
"""
import dataclasses

import grain
import numpy as np


@dataclasses.dataclass(frozen=True)
class _Select(grain.transforms.Map):
  """Keep image and label only, as uint8 / int32."""

  def map(self, item):
    return {'image': np.asarray(item['image'], np.uint8),
            'label': np.asarray(item['label'], np.int32)}


@dataclasses.dataclass(frozen=True)
class _PadCrop(grain.transforms.RandomMap):
  """Reflect-padded random crop back to the input size (flips happen on the device)."""
  padding: int

  def random_map(self, item, rng: np.random.Generator):
    img = item['image']
    p = self.padding
    padded = np.pad(img, ((p, p), (p, p), (0, 0)), mode='reflect')
    y, x = rng.integers(0, 2 * p + 1, size=2)
    img = padded[y:y + img.shape[0], x:x + img.shape[1]]
    return {'image': np.ascontiguousarray(img), 'label': item['label']}


def train_loader(source, dataset_cfg, per_process_batch: int, seed: int) -> grain.DataLoader:
  ops = [_Select()]
  if dataset_cfg.random_crop_padding:
    ops.append(_PadCrop(dataset_cfg.random_crop_padding))
  ops.append(grain.transforms.Batch(per_process_batch, drop_remainder=True))
  sampler = grain.samplers.IndexSampler(
      num_records=len(source), shuffle=True, num_epochs=None, seed=seed,
      shard_options=grain.sharding.ShardByJaxProcess(drop_remainder=True))
  return grain.DataLoader(data_source=source, sampler=sampler, operations=ops,
                          worker_count=dataset_cfg.workers,
                          read_options=grain.ReadOptions(num_threads=0))


def eval_batches(source, batch_size: int, limit: int | None = None):
  """Fixed-order batches padded to batch_size; 'mask' marks the real examples."""
  n = len(source) if limit is None else min(limit, len(source))
  for start in range(0, n, batch_size):
    items = [source[i] for i in range(start, min(start + batch_size, n))]
    real = len(items)
    images = np.stack([np.asarray(it['image'], np.uint8) for it in items])
    labels = np.array([it['label'] for it in items], np.int32)
    pad = batch_size - real
    yield {'image': np.pad(images, ((0, pad), (0, 0), (0, 0), (0, 0))),
           'label': np.pad(labels, (0, pad)),
           'mask': np.arange(batch_size) < real}
