"""The fine-tuning recipe: parameter groups with their own learning rates (hand-computed)."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmret.config import load_config
from mmret.jobs.pretrain import model as model_lib
from mmret.train import optimizer as optimizer_lib


def _optim(name, **kw):
  base = dict(name=name, lr=0.1, pretrained_lr=0.01, final_lr_ratio=1.0, warmup_steps=0,
              weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, clip_norm=0.0)
  base.update(kw)
  return ml_collections.ConfigDict(base)


PARAMS = {'encoder': {'layer': {'kernel': jnp.array([[1.0, 2.0]])}},
          'qic': {'bias': jnp.array([3.0, -1.0])}}
GRADS = {'encoder': {'layer': {'kernel': jnp.array([[0.5, -2.0]])}},
         'qic': {'bias': jnp.array([4.0, 0.25])}}


def test_param_groups_label_the_imported_subtree():
  groups = optimizer_lib.param_groups(PARAMS, ('encoder',))
  assert groups == {'encoder': {'layer': {'kernel': 'pretrained'}}, 'qic': {'bias': 'new'}}


def test_adam_first_step_per_group():
  tx = optimizer_lib.make_optimizer(_optim('adam'), 10, pretrained=('encoder',))
  updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
  # Adam's first step: m_hat = g, v_hat = g^2, update = -lr * g / (|g| + eps).
  adam = lambda lr, g: -lr * g / (np.abs(g) + 1e-8)
  np.testing.assert_allclose(updates['encoder']['layer']['kernel'],
                             adam(0.01, np.array([[0.5, -2.0]])), rtol=1e-4)
  np.testing.assert_allclose(updates['qic']['bias'], adam(0.1, np.array([4.0, 0.25])),
                             rtol=1e-4)


def test_sgd_warmup_per_group():
  # Linear warm-up over 2 steps: learning rates 0, then lr / 2 at the second update.
  tx = optimizer_lib.make_optimizer(_optim('sgd', b1=0.0, warmup_steps=2), 10,
                                    pretrained=('encoder',))
  state = tx.init(PARAMS)
  first, state = tx.update(GRADS, state, PARAMS)
  np.testing.assert_allclose(first['qic']['bias'], [0.0, 0.0])
  second, _ = tx.update(GRADS, state, PARAMS)
  np.testing.assert_allclose(second['encoder']['layer']['kernel'], [[-0.0025, 0.01]], rtol=1e-6)
  np.testing.assert_allclose(second['qic']['bias'], [-0.2, -0.0125], rtol=1e-6)


@pytest.mark.parametrize('pretrained, pretrained_lr', [((), 0.01), (('encoder',), 0.0)])
def test_one_group_without_imported_weights_or_pretrained_lr(pretrained, pretrained_lr):
  optim = _optim('sgd', b1=0.0, pretrained_lr=pretrained_lr)
  tx = optimizer_lib.make_optimizer(optim, 10, pretrained=pretrained)
  updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
  # Either no imported weights, or pretrained_lr = 0: one learning rate, 0.1, for everything.
  np.testing.assert_allclose(updates['encoder']['layer']['kernel'], [[-0.05, 0.2]], rtol=1e-6)


def test_recipe_is_the_default_when_weights_are_imported():
  config = load_config('configs/pretrain.py:default')
  assert config.model.text_init == 'minilm'
  assert model_lib.pretrained_keys(config) == ('encoder',)
  # The imported encoder moves more slowly than the new heads (1e-4 vs 5e-4, README issue 14),
  # and model selection (the initialisation a candidate) is on.
  assert 0 < config.optim.pretrained_lr < config.optim.lr
  assert config.select.every > 0 and config.select.min_queries > 0
  tiny = load_config('configs/pretrain.py:tiny')
  assert model_lib.pretrained_keys(tiny) == ()  # random init: nothing is pretrained
