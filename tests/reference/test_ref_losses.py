"""Losses against torch and timm on identical logits and targets: DeiT-III's BCE as its
engine.py trains it, timm's SoftTargetCrossEntropy, and DeiT's DistillationLoss (a torch
transcription of its semantics, the deit repository not being a package). Values and
gradients within 1e-6 relative."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy

from vit_jax import config_lib
from vit_jax.train import losses

B, C = 6, 10
RTOL = 1e-6


def _logits(seed=0, scale=3.0):
  return np.random.default_rng(seed).normal(size=(B, C)).astype(np.float32) * scale


def _mixed_targets(smoothing=0.0, lam=0.7):
  """timm's Mixup targets: one-hot (smoothed), mixed with the flipped batch."""
  labels = torch.tensor([0, 3, 3, 7, 9, 1])
  return mixup_target(labels, C, lam=lam, smoothing=smoothing).numpy()


def _value_and_grad(fn, logits, targets):
  return jax.value_and_grad(lambda l: fn(l, jnp.asarray(targets)))(jnp.asarray(logits))


def _torch_value_and_grad(fn, logits, targets):
  x = torch.tensor(logits, requires_grad=True)
  loss = fn(x, torch.tensor(targets))
  loss.backward()
  return loss.item(), x.grad.numpy()


def _close(ours, theirs):
  np.testing.assert_allclose(float(ours[0]), theirs[0], rtol=RTOL)
  np.testing.assert_allclose(np.asarray(ours[1]), theirs[1], rtol=1e-5, atol=1e-9)


def test_deit3_bce_is_bce_with_logits_on_binarised_mixed_targets():
  """deit main.py: BCEWithLogitsLoss() (mean over batch x classes); engine.py binarises
  the mixed targets with targets.gt(0.0) before the loss."""
  logits, targets = _logits(), _mixed_targets()
  theirs = _torch_value_and_grad(
      lambda x, t: torch.nn.BCEWithLogitsLoss()(x, t.gt(0.0).type(t.dtype)), logits, targets)
  ours = _value_and_grad(lambda l, t: losses.sigmoid_bce(l, t, binarize_threshold=0.0),
                         logits, targets)
  _close(ours, theirs)
  # The recipe's own loss function is that one.
  c = config_lib.load('vanilla')
  _close(_value_and_grad(losses.batch_loss(c.loss), logits, targets), theirs)


def test_bce_without_binarising_keeps_soft_targets():
  logits, targets = _logits(1), _mixed_targets(smoothing=0.1)
  theirs = _torch_value_and_grad(torch.nn.BCEWithLogitsLoss(), logits, targets)
  _close(_value_and_grad(losses.sigmoid_bce, logits, targets), theirs)


@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_softmax_xent_is_timm_soft_target_cross_entropy(smoothing):
  logits, targets = _logits(2), _mixed_targets(smoothing)
  theirs = _torch_value_and_grad(SoftTargetCrossEntropy(), logits, targets)
  _close(_value_and_grad(losses.softmax_xent, logits, targets), theirs)


def deit_distillation_loss(outputs, outputs_kd, labels, teacher_outputs, kind, alpha, tau):
  """DeiT's losses.DistillationLoss (its semantics, transcribed): base criterion on the cls
  head; hard = cross-entropy against the teacher's argmax; soft = KL(log_softmax(s/T) ||
  log_softmax(t/T)) summed, log_target, times T^2 / numel."""
  base = SoftTargetCrossEntropy()(outputs, labels)
  if kind == 'soft':
    kd = F.kl_div(F.log_softmax(outputs_kd / tau, dim=1),
                  F.log_softmax(teacher_outputs / tau, dim=1),
                  reduction='sum', log_target=True) * (tau * tau) / outputs_kd.numel()
  else:
    kd = F.cross_entropy(outputs_kd, teacher_outputs.argmax(dim=1))
  return base * (1 - alpha) + kd * alpha


@pytest.mark.parametrize('kind,alpha,tau', [('hard', 0.5, 1.0), ('soft', 0.5, 3.0),
                                            ('soft', 0.1, 1.0)])
def test_distillation_matches_deit(kind, alpha, tau):
  cls, dist, teacher = _logits(3), _logits(4), _logits(5, scale=5.0)
  targets = _mixed_targets(0.1)
  x_cls = torch.tensor(cls, requires_grad=True)
  x_dist = torch.tensor(dist, requires_grad=True)
  want = deit_distillation_loss(x_cls, x_dist, torch.tensor(targets), torch.tensor(teacher),
                                kind, alpha, tau)
  want.backward()

  def ours(c, d):
    return losses.deit_objective(c, d, jnp.asarray(targets), jnp.asarray(teacher),
                                 base=losses.softmax_xent, kind=kind, alpha=alpha, tau=tau)
  value, (g_cls, g_dist) = jax.value_and_grad(ours, (0, 1))(jnp.asarray(cls), jnp.asarray(dist))
  np.testing.assert_allclose(float(value), want.item(), rtol=RTOL)
  np.testing.assert_allclose(np.asarray(g_cls), x_cls.grad.numpy(), rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(np.asarray(g_dist), x_dist.grad.numpy(), rtol=1e-5, atol=1e-9)
