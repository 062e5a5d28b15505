"""Training machinery: partition specs on 8 fake devices, 1-vs-8-device step equality,
checkpoint save -> restore -> identical next step, the NaN guard."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mmret.config import load_config
from mmret.towers import masking
from mmret.towers.pretrain import PretrainModel
from mmret.towers.pretrain import set_codebook
from mmret.train import checkpoint as checkpoint_lib
from mmret.train import metrics_log
from mmret.train import optimizer as optimizer_lib
from mmret.jobs.pretrain import model as pretrain_model
from mmret.jobs.pretrain import objective
from mmret.train import sharding as sharding_lib
from mmret.train import state as state_lib
from mmret.train import step as step_lib

B = 8


@pytest.fixture(scope='module')
def config():
  c = load_config('configs/pretrain.py:tiny')
  with c.unlocked():
    c.model.dropout = 0.0
  return c


def make_batch(seed=0, vocab=64):
  rs = np.random.RandomState(seed)
  lq, lt = 6, 10
  q_mask = np.arange(lq)[None] < rs.randint(3, lq + 1, size=(B, 1))
  t_mask = np.arange(lt)[None] < rs.randint(4, lt + 1, size=(B, 1))
  return {
      'query_tokens': np.where(q_mask, rs.randint(5, vocab, (B, lq)), 0).astype(np.int32),
      'query_mask': q_mask,
      'title_tokens': np.where(t_mask, rs.randint(5, vocab, (B, lt)), 0).astype(np.int32),
      'title_mask': t_mask,
      'image': rs.randint(0, 256, (B, 32, 32, 3)).astype(np.uint8),
      'image_present': np.array([True] * (B - 2) + [False] * 2),
      'text_present': np.array([True] * (B - 1) + [False]),
      'query_index': np.arange(B, dtype=np.int32),
      # A duplicate item (rows 0 and 1) exercises the QIC validity mask.
      'item_index': np.array([0, 0] + list(range(2, B)), np.int32),
  }


def build(config, mesh, batch):
  rules = sharding_lib.rules_from_config(config.axis_rules)
  model = PretrainModel(config.model, vocab_size=64, mask_token_id=4)
  tx = optimizer_lib.make_optimizer(config.optim, 10)
  codebook = masking.fit_mpm_codebook(batch['image'], config.model.patch_size,
                                      config.model.mpm_classes, grid=config.model.mpm_grid)

  def init_variables(rng):
    variables = model.init({'params': rng, 'dropout': rng, 'masking': rng}, batch, train=False)
    return set_codebook(variables, codebook)

  state, shardings = state_lib.create_sharded_state(
      init_variables, tx, jax.random.key(0), mesh, rules,
      state_lib.step_key_data(1, config.train.rng_impl))
  step = step_lib.make_train_step(
      model, tx, functools.partial(objective.pretrain_objective, loss=config.loss), mesh,
      shardings, rng_streams=pretrain_model.RNG_STREAMS, rng_impl=config.train.rng_impl)
  return state, shardings, step, rules, init_variables


def run_steps(config, mesh, n, batch):
  state, shardings, step, rules, _ = build(config, mesh, batch)
  metrics = None
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    for i in range(n):
      state, metrics = step(state, sharding_lib.to_device(make_batch(i), mesh))
  return state, jax.device_get(metrics), shardings


def test_eight_fake_devices():
  assert jax.device_count() == 8


def test_partition_specs_of_all_params(config):
  mesh = sharding_lib.make_mesh((2, 4), ('data', 'model'))
  batch = make_batch()
  rules = sharding_lib.rules_from_config(config.axis_rules)
  model = PretrainModel(config.model, vocab_size=64, mask_token_id=4)
  abstract = jax.eval_shape(lambda: model.init(
      {'params': jax.random.PRNGKey(0), 'masking': jax.random.PRNGKey(1)}, batch))
  logical = nn.get_partition_spec(abstract['params'])
  leaves = jax.tree.leaves(abstract['params'], is_leaf=lambda x: isinstance(x, nn.Partitioned))
  # Every parameter carries logical axis names, one per dimension.
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  assert all(len(x.names) == x.value.ndim for x in leaves)
  # Logical names map to mesh axes only through the config's rules.
  mesh_specs = nn.logical_to_mesh(logical, rules)
  flat = dict(jax.tree_util.tree_flatten_with_path(
      mesh_specs, is_leaf=lambda x: isinstance(x, P))[0])
  names = {jax.tree_util.keystr(k): v for k, v in flat.items()}
  word = [v for k, v in names.items() if 'word_embeddings' in k]
  assert word and all(v == P('model', None) for v in word)     # vocab -> model axis
  mlp = [v for k, v in names.items() if 'mlp' in k.lower() and 'kernel' in k]
  assert mlp and all('model' in tuple(v) for v in mlp)          # mlp -> model axis
  assert all('data' not in tuple(v) for v in names.values())   # params never split by batch
  # The state is created with these shardings: a vocab-sharded table holds 1/4 rows per device.
  state, shardings, *_ = build(config, mesh, batch)
  table = [x for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]
           if 'word_embeddings' in jax.tree_util.keystr(p)][0]
  assert table.sharding.spec == P('model', None)
  assert table.addressable_shards[0].data.shape[0] == table.shape[0] // 4
  assert shardings.step.spec == P()


def test_one_device_step_equals_eight_device_step(config):
  one = sharding_lib.make_mesh((1, 1), ('data', 'model'), devices=jax.devices()[:1])
  eight = sharding_lib.make_mesh((8, 1), ('data', 'model'))
  s1, m1, _ = run_steps(config, one, 2, make_batch())
  s8, m8, _ = run_steps(config, eight, 2, make_batch())
  for a, b in zip(jax.tree.leaves(jax.device_get(s1.params)),
                  jax.tree.leaves(jax.device_get(s8.params))):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
  for k in m1:
    np.testing.assert_allclose(m1[k], m8[k], rtol=2e-4, atol=2e-5, err_msg=k)
  assert m1['loss/total'] > 0


def test_checkpoint_restore_gives_identical_next_step(config, tmp_path):
  mesh = sharding_lib.make_mesh((4, 1), ('data', 'model'), devices=jax.devices()[:4])
  state, shardings, step, rules, _ = build(config, mesh, make_batch())
  ckpt = checkpoint_lib.Checkpointer(tmp_path, every_steps=1)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state, _ = step(state, sharding_lib.to_device(make_batch(0), mesh))
    ckpt.save(1, state, None)
    expected, expected_metrics = step(state, sharding_lib.to_device(make_batch(1), mesh))
    expected = jax.device_get(expected)
    fresh, *_ = build(config, mesh, make_batch())
    restored = ckpt.restore(fresh, None)
    assert int(restored.step) == 1
    again, again_metrics = step(restored, sharding_lib.to_device(make_batch(1), mesh))
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(jax.device_get(again))):
    np.testing.assert_array_equal(a, b)
  assert float(expected_metrics['loss/total']) == float(again_metrics['loss/total'])
  ckpt.close()


def test_nan_guard_names_step_and_metric():
  logger = metrics_log.MetricsLogger(None, enabled=False)
  logger.log(3, {'loss/total': jnp.float32(1.0)})
  with pytest.raises(metrics_log.NonFiniteError, match=r"step 7: .*loss/qic"):
    logger.log(7, {'loss/total': jnp.float32(1.0), 'loss/qic': jnp.float32(np.nan)})


def test_progress_line_has_total_rates_and_eta(capsys, monkeypatch):
  clock = [100.0]
  monkeypatch.setattr(metrics_log.time, 'perf_counter', lambda: clock[0])
  logger = metrics_log.MetricsLogger(None, total_steps=100, batch_size=32, prefix='v ')
  logger.reset_clock(10)
  clock[0] += 2.0  # 10 steps in 2 s: 5 steps/s, 160 examples/s, 80 steps left: 16 s
  host = logger.log(20, {'loss/total': jnp.float32(1.5)}, print_keys=('loss/total',))
  assert host['perf/steps_per_sec'] == 5.0
  assert capsys.readouterr().out.strip() == (
      'v [step 20/100] loss/total=1.5 | 5 steps/s, 160 ex/s, ETA 16s')
  assert metrics_log.format_seconds(76) == '1m16s' and metrics_log.format_seconds(3725) == '1h02m'


def test_compile_timer_sees_a_new_compilation():
  from mmret.train import compile_time  # pylint: disable=g-import-not-at-top
  f = jax.jit(lambda x: jnp.tanh(x) @ x.T + 3.0)
  with compile_time.CompileTimer() as first:
    f(jnp.ones((17, 19))).block_until_ready()
  with compile_time.CompileTimer() as cached:
    f(jnp.ones((17, 19))).block_until_ready()
  assert first.seconds > 0.0 and cached.seconds == 0.0
