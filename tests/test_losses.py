"""Losses against values worked out by hand."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.train import losses


def test_label_smoothing():
  got = losses.smooth_labels(jnp.array([[0.0, 1.0, 0.0, 0.0]]), 0.1)
  np.testing.assert_allclose(got, [[0.025, 0.925, 0.025, 0.025]], rtol=1e-6)


def test_softmax_xent_by_hand():
  logits = jnp.array([[0.0, math.log(3.0)]])          # p = (1/4, 3/4)
  np.testing.assert_allclose(losses.softmax_xent(logits, jnp.array([[0.0, 1.0]])),
                             -math.log(0.75), rtol=1e-6)
  np.testing.assert_allclose(losses.softmax_xent(logits, jnp.array([[0.5, 0.5]])),
                             -(math.log(0.25) + math.log(0.75)) / 2, rtol=1e-6)


def test_sigmoid_bce_means_batch_and_classes_and_binarizes():
  logits = jnp.zeros((2, 2))                             # sigmoid = 1/2 everywhere
  targets = jnp.array([[0.6, 0.4], [1.0, 0.0]])
  np.testing.assert_allclose(losses.sigmoid_bce(logits, targets), math.log(2), rtol=1e-6)
  logits = jnp.array([[2.0, -1.0]])
  soft = losses.sigmoid_bce(logits, jnp.array([[0.6, 0.4]]))
  hard = losses.sigmoid_bce(logits, jnp.array([[0.6, 0.4]]), binarize_threshold=0.5)
  both = losses.sigmoid_bce(logits, jnp.array([[0.6, 0.4]]), binarize_threshold=0.0)
  sp = lambda x: math.log1p(math.exp(x))                 # softplus
  np.testing.assert_allclose(hard, (sp(-2.0) + sp(-1.0)) / 2, rtol=1e-6)   # targets -> (1, 0)
  np.testing.assert_allclose(both, (sp(-2.0) + sp(1.0)) / 2, rtol=1e-6)    # targets -> (1, 1)
  np.testing.assert_allclose(soft, (0.6 * sp(-2) + 0.4 * sp(2) + 0.4 * sp(1) + 0.6 * sp(-1)) / 2,
                             rtol=1e-6)


def test_hard_distillation_uses_teacher_argmax():
  student = jnp.array([[0.0, math.log(3.0), 0.0]])
  teacher = jnp.array([[0.1, 0.2, 5.0]])                 # argmax = class 2
  p2 = 1 / (1 + 3 + 1)
  np.testing.assert_allclose(losses.hard_distillation(student, teacher), -math.log(p2), rtol=1e-6)


def test_soft_distillation_kl_times_tau_squared_over_logits():
  student = np.array([[1.0, 0.0, -1.0]])
  teacher = np.array([[0.0, 2.0, 0.0]])
  tau = 3.0
  soft = lambda z: np.exp(z / tau) / np.exp(z / tau).sum()
  pt, ps = soft(teacher[0]), soft(student[0])
  expected = (pt * np.log(pt / ps)).sum() * tau**2 / 3      # / (batch x classes)
  np.testing.assert_allclose(losses.soft_distillation(jnp.array(student), jnp.array(teacher), tau),
                             expected, rtol=1e-5)
  assert float(losses.soft_distillation(jnp.array(teacher), jnp.array(teacher), tau)) == \
      pytest.approx(0.0, abs=1e-6)


def test_deit_objective_weights_heads():
  cls = jnp.array([[0.0, math.log(3.0)]])
  dist = jnp.array([[math.log(3.0), 0.0]])
  labels = jnp.array([[0.0, 1.0]])
  teacher = jnp.array([[1.0, 0.0]])                      # argmax 0: dist head agrees with it
  got = losses.deit_objective(cls, dist, labels, teacher, base=losses.softmax_xent,
                              kind='hard', alpha=0.5, tau=1.0)
  np.testing.assert_allclose(got, 0.5 * -math.log(0.75) + 0.5 * -math.log(0.75), rtol=1e-6)
  got = losses.deit_objective(cls, dist, labels, teacher, base=losses.softmax_xent,
                              kind='hard', alpha=0.25, tau=1.0)
  np.testing.assert_allclose(got, -math.log(0.75), rtol=1e-6)
  none = losses.deit_objective(cls, dist, labels, None, base=losses.softmax_xent,
                               kind='none', alpha=0.5, tau=1.0)
  np.testing.assert_allclose(none, 0.5 * -math.log(0.75) + 0.5 * -math.log(0.25), rtol=1e-6)
  with pytest.raises(ValueError, match="teacher.kind='medium' is not one of"):
    losses.deit_objective(cls, dist, labels, teacher, base=losses.softmax_xent, kind='medium',
                          alpha=0.5, tau=1.0)


def test_topk_correct():
  logits = jnp.array([[0.1, 0.5, 0.2], [0.9, 0.0, 0.3]])
  np.testing.assert_array_equal(losses.topk_correct(logits, jnp.array([2, 2]), 1), [0, 0])
  np.testing.assert_array_equal(losses.topk_correct(logits, jnp.array([2, 2]), 2), [1, 1])
  np.testing.assert_array_equal(losses.topk_correct(logits, jnp.array([0, 1]), 5), [1, 1])
