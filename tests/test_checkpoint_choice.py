"""'best' is the saved epoch with the highest val_acc1, the later among equals
(checkpoint.best_step's rule), and every reader of a workdir takes that one: the
analysis, the evaluation, the export and the teacher loader. Best is not the latest here:
epochs 1-4 scored 10, 50, 50, 30, so best is 3 (latest 4, first maximum 2). Each epoch's
head bias makes every prediction its own epoch number, so what a reader restored shows in
what it outputs. Checkpoint steps count optimizer updates (UPDATES an epoch), so an epoch is
read from a checkpoint's metrics, never from its folder name."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from safetensors.numpy import load_file

from vit_jax import config_lib
from vit_jax import export
from vit_jax.analysis import run as analysis_run
from vit_jax.train import checkpoint
from vit_jax.train import evaluate
from vit_jax.train import metrics_io
from vit_jax.train import steps
from vit_jax.train import teacher

ACC = [10.0, 50.0, 50.0, 30.0]
BEST = 3
UPDATES = 5                     # optimizer updates an epoch: epoch e is step 5 e


def _config():
  c = config_lib.load('vanilla', 'quick')
  c.model.update(depth=1, width=32, num_heads=2)
  c.probe.num_images = 8
  return c


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('choice'))
  c = _config()
  state = steps.CompiledSteps(c).setup(steps_per_epoch=1)
  mngr = checkpoint.manager(path, every_epochs=1)
  for epoch, acc in enumerate(ACC, 1):
    params = jax.tree.map(jnp.copy, state.params)
    params['head']['out']['bias'] = 1000.0 * jax.nn.one_hot(epoch, 10)   # predicts `epoch`
    checkpoint.save(mngr, epoch * UPDATES, state.replace(params=params), {'seed': 0},
                    metrics={'epoch': epoch, 'val_acc1': acc})
  mngr.close()
  metrics_io.write(os.path.join(path, 'metrics.csv'),
                   [{'epoch': e, 'val_acc1': a} for e, a in enumerate(ACC, 1)])
  with open(os.path.join(path, 'config.json'), 'w') as f:
    f.write(c.to_json_best_effort(indent=2))
  return path


def test_best_is_the_highest_later_among_equals_not_the_latest(workdir):
  assert checkpoint.saved_steps(os.path.join(workdir, 'checkpoints')) == [5, 10, 15, 20]
  assert checkpoint.best_step(os.path.join(workdir, 'checkpoints')) == BEST * UPDATES
  assert checkpoint.select_step(workdir, 'best', 'x') == BEST
  assert checkpoint.select_step(workdir, 'latest', 'x') == 4


def test_evaluate_best(workdir):
  c = _config()
  c.trainer = 'evaluate'
  c.evaluate.update(checkpoint='best', weights='raw', split='val')
  result = evaluate.evaluate(c, workdir)
  assert result['epoch'] == BEST
  logits = np.load(os.path.join(workdir, f'evaluate_val_{BEST}_raw.npz'))['logits']
  assert (logits.argmax(-1) == BEST).all()


def test_analyze_best(workdir):
  c = _config()
  c.trainer = 'analyze'
  c.analysis.checkpoint = 'best'
  epoch = analysis_run.check(c, workdir)
  assert epoch == BEST
  params = analysis_run.load_params(c, checkpoint.epoch_dir(workdir, epoch))
  images, labels = analysis_run.probe_batch(c)
  assert analysis_run.top1(c, params, images, labels) == pytest.approx(
      100 * np.mean(labels == BEST))


def test_export_best(workdir, tmp_path):
  out = export.export(workdir, str(tmp_path / 'hub'), 'best')
  tensors = load_file(os.path.join(out, 'model.safetensors'))
  assert int(np.argmax(tensors['head.bias'])) == BEST
  assert json.load(open(os.path.join(out, 'config.json')))['num_classes'] == 10


def test_teacher_loader_takes_best(workdir):
  c = _config()
  cfg = ml_collections.ConfigDict(dict(kind='hard', checkpoint=workdir, model=c.model))
  assert teacher.resolve_step_dir(workdir) == os.path.join(workdir, 'checkpoints',
                                                           str(BEST * UPDATES))
  _, params = teacher.load(cfg, 10)
  assert int(np.argmax(params['head']['out']['bias'])) == BEST


def test_a_step_folder_without_its_state_is_not_a_saved_epoch(tmp_path):
  """orbax renames a finished step into place; a numbered folder without its state (a
  copy cut short) is no checkpoint, for 'latest' as for 'best'."""
  folder = tmp_path / 'checkpoints'
  for step, acc in ((2 * UPDATES, 50.0), (7 * UPDATES, 99.0)):
    (folder / str(step) / 'metrics').mkdir(parents=True)
    (folder / str(step) / 'metrics' / 'metrics').write_text(
        json.dumps({'epoch': step // UPDATES, 'val_acc1': acc}))
  (folder / str(2 * UPDATES) / 'state').mkdir()                # epoch 7's state is missing
  (folder / 'preempted').mkdir()
  assert checkpoint.saved_steps(str(folder)) == [2 * UPDATES]
  assert checkpoint.select_step(str(tmp_path), 'latest', 'x') == 2  # the epoch
  assert checkpoint.best_step(str(folder)) == 2 * UPDATES


def test_shape_mismatch_names_the_first_difference():
  """The one line a resume, a teacher or an analysed run refuses with, by hand: paths in
  sorted order, a parameter missing from the checkpoint, one the config lacks, a shape."""
  saved = {'a/kernel': (2, 3), 'b/bias': (4,)}
  assert checkpoint.shape_mismatch(saved, dict(saved)) is None
  assert checkpoint.shape_mismatch(saved, {**saved, 'a/bias': (3,)}) == (
      'a/bias is missing from the checkpoint (the config expects (3,))')
  assert checkpoint.shape_mismatch({**saved, 'c': (1,)}, saved) == (
      'the checkpoint has c (1,), which the config does not')
  assert checkpoint.shape_mismatch(saved, {'a/kernel': (2, 4), 'b/bias': (5,)}) == (
      'a/kernel has shape (2, 3) in the checkpoint, (2, 4) in the config')
