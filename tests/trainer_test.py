"""The train step and the Trainer: policy moves, reference frozen, sharding
parity on fake devices, exact resume, and errors before long work."""

import functools
import os
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ipo_md_tasks  # noqa: F401  (registers the synthetic task)
from ipo_md import checkpoints
from ipo_md import losses
from ipo_md import optim
from ipo_md import partitioning
from ipo_md import types
from ipo_md.data import pipeline as data_pipeline
from ipo_md.data import synthetic
from ipo_md.decoding import sampling
from ipo_md.model import config as config_lib
from ipo_md.model import network
from ipo_md.model import scoring
from ipo_md.preference import oracle
from ipo_md.trainer import loop as loop_lib
from ipo_md.trainer import models as models_lib
from ipo_md.trainer import objectives
from ipo_md.trainer import step as step_lib
from ipo_md.trainer import train_state as train_state_lib


# Every mesh of 8 devices with IPO_MD_SLOW=1; the default suite compiles one
# (each mesh costs about 35 s of CPU). trainer_test.py takes (4, 2) and
# pipeline_test.py (2, 4), so the default suite covers both splits.
MESHES = (((8, 1), (4, 2), (2, 4)) if os.environ.get("IPO_MD_SLOW") == "1"
          else ((4, 2),))

# Smaller than "tiny": these tests compile whole train steps many times.
CFG = config_lib.T5Config(vocab_size=64, emb_dim=32, num_heads=4, head_dim=8,
                          mlp_dim=64, num_encoder_layers=1,
                          num_decoder_layers=1)
MODEL = network.Transformer(CFG)
MODELS = models_lib.Models(policy=MODEL, reference=MODEL)
SAMPLING = sampling.SamplingConfig(max_decode_length=8)


def _objective(beta=0.3, tau=0.5, model=MODEL):
  return objectives.OnlinePairwise(
      models=models_lib.Models(policy=model, reference=model),
      loss_fn=functools.partial(losses.ipo_loss, tau=tau),
      preference=oracle.FactsOracle(), sampling=SAMPLING, beta=beta)


def _prompts(n=8):
  cfg = data_pipeline.DataConfig(task="synthetic_facts_prompts",
                                 split="validation", kind="prompts",
                                 batch_size=n, feature_lengths={"inputs": 64})
  return data_pipeline.load_batch(cfg, n)["inputs"]


def _params(seed):
  return scoring.init_params(MODEL, jax.random.PRNGKey(seed))


def _tx():
  return optim.adafactor_t5(1e-2), optim.make_schedule(base_learning_rate=1e-2)


def _leaves_equal(a, b):
  return all(np.array_equal(x, y) for x, y in
             zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_policy_changes_and_reference_stays_bit_identical():
  tx, schedule = _tx()
  policy, ref = _params(0), _params(1)
  ref_copy = jax.tree_util.tree_map(np.array, ref)
  state = train_state_lib.create(policy, tx, seed=0)
  before = jax.tree_util.tree_map(np.array, state.params)
  step = jax.jit(functools.partial(step_lib.train_step, objective=_objective(),
                                   tx=tx, schedule=schedule))
  new_state, metrics = step(state, {"inputs": _prompts()},
                            types.Frozen(reference=ref))
  assert int(new_state.step) == 1
  assert np.isfinite(float(metrics["loss"]))
  changed = [not np.array_equal(a, b) for a, b in zip(
      jax.tree_util.tree_leaves(before),
      jax.tree_util.tree_leaves(new_state.params))]
  assert all(changed), "every policy tensor should receive an update"
  assert _leaves_equal(ref, ref_copy), "the reference must not change"


def test_loss_is_ipo_on_policy_vs_reference_log_ratios():
  """The step's loss equals ipo_loss recomputed from independent scoring of
  the same samples (mixture log-probs never enter h)."""
  obj = _objective(beta=0.5, tau=0.25)
  policy, ref = _params(0), _params(1)
  inputs = jnp.asarray(_prompts())
  frozen = types.Frozen(reference=ref)
  prepared, _ = jax.jit(obj.prepare)(policy, frozen, {"inputs": inputs},
                                     jax.random.PRNGKey(3))
  loss, _ = jax.jit(obj.loss)(policy, frozen, prepared, None)
  score = jax.jit(
      lambda p, y: scoring.score_targets(MODEL, p, inputs, y).sequence)
  y, yp = prepared["y"], prepared["yp"]
  h = (score(policy, y) - score(ref, y)) - (score(policy, yp) - score(ref, yp))
  p = oracle.FactsOracle()(None, inputs, y, yp)
  expected = np.mean((np.asarray(h) - (np.asarray(p) - 0.5) / 0.25) ** 2)
  np.testing.assert_allclose(float(loss), expected, rtol=2e-5)
  np.testing.assert_allclose(prepared["ref_y"], score(ref, y), atol=2e-5)


def _run_on_mesh(mesh, steps=3):
  tx, schedule = _tx()
  _, state_shard, p_shard = loop_lib.abstract_train_state(MODEL, tx, mesh)
  rep = partitioning.replicated(mesh)
  state = jax.jit(lambda: train_state_lib.create(_params(0), tx, 0),
                  out_shardings=state_shard)()
  ref = types.Frozen(reference=jax.device_put(_params(1), p_shard))
  batch_shard = partitioning.batch_sharding(mesh)
  # Compiled as the Trainer compiles it: activation constraints active.
  step = partitioning.sharded_jit(
      functools.partial(step_lib.train_step, objective=_objective(), tx=tx,
                        schedule=schedule), mesh,
      in_shardings=(state_shard, batch_shard,
                    types.Frozen(reference=p_shard)),
      out_shardings=(state_shard, rep), donate_argnums=(0,))
  batch = {"inputs": jax.device_put(_prompts(8), batch_shard)}
  losses_ = []
  for _ in range(steps):
    state, metrics = step(state, batch, ref)
    losses_.append(float(metrics["loss"]))
  return jax.device_get(state.params), losses_, state


@pytest.mark.slow
def test_sharded_equals_single_device():
  devices = jax.devices()
  assert len(devices) == 8, "conftest sets 8 fake CPU devices"
  one = partitioning.make_mesh(partitioning.MeshConfig(data=1, model=1),
                               devices[:1])
  base_params, base_losses, _ = _run_on_mesh(one)
  for data, model in MESHES:
    mesh = partitioning.make_mesh(
        partitioning.MeshConfig(data=data, model=model))
    params, losses_, state = _run_on_mesh(mesh)
    # The configurations really differ: the state is spread over the mesh.
    kernel = state.params["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "model")
    assert len(kernel.sharding.device_set) == 8
    np.testing.assert_allclose(losses_, base_losses, rtol=1e-4, atol=1e-5,
                               err_msg=f"mesh ({data},{model})")
    for a, b in zip(jax.tree_util.tree_leaves(params),
                    jax.tree_util.tree_leaves(base_params)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5,
                                 err_msg=f"mesh ({data},{model})")


def _trainer(directory, num_steps, *, mesh=None, model=MODEL, batch_size=8,
             every=0):
  tx, schedule = _tx()
  mesh = mesh or partitioning.make_mesh(
      partitioning.MeshConfig(data=1, model=1), jax.devices()[:1])
  data = data_pipeline.DataConfig(task="synthetic_facts_prompts",
                                  split="validation", kind="prompts",
                                  batch_size=batch_size,
                                  feature_lengths={"inputs": 64}, seed=3)
  ref = scoring.init_params(model, jax.random.PRNGKey(1))
  _, p_shard = models_lib.param_shardings(model.config, mesh)
  return loop_lib.Trainer(
      name="test", network=model, objective=_objective(model=model), tx=tx,
      schedule=schedule, mesh=mesh, data=data,
      loop=loop_lib.LoopConfig(num_steps=num_steps, log_every=1),
      checkpoint=checkpoints.CheckpointConfig(every=every, keep=2),
      directory=pathlib.Path(directory),
      frozen=types.Frozen(reference=jax.device_put(ref, p_shard)),
      frozen_shardings=types.Frozen(reference=p_shard),
      init_params=lambda: scoring.init_params(model, jax.random.PRNGKey(0)))


def test_trainer_step_carries_activation_and_optimizer_shardings(tmp_path):
  # The Trainer traces its step under the logical axis rules (the layers'
  # constraints reach the program) and shards Adafactor's factored moments
  # from the parameters' logical axes.
  if len(jax.devices()) < 8:
    pytest.skip("needs the 8 fake CPU devices of conftest")
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=2, model=4))
  trainer = _trainer(tmp_path, 1, mesh=mesh)
  batch = {"inputs": jax.ShapeDtypeStruct((8, 64), jnp.int32,
                                          sharding=trainer.batch_sharding)}
  frozen = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      trainer.frozen, types.Frozen(reference=trainer.param_shardings))
  text = trainer._step_fn.lower(trainer.abstract_state, batch,
                                frozen).as_text()
  constraints = re.findall(
      r"sdy\.sharding_constraint %\S+ <@\w+, (\[[^\]]*\])> : "
      r"(tensor<[^>]*>)", text)
  # The encoder's MLP hidden activation [prompts, 64, mlp]: batch on "data",
  # mlp on "model".
  assert ('[{"data"}, {}, {"model"}]', "tensor<8x64x64xf32>") in constraints, (
      sorted(set(constraints)))
  # Adafactor's second moment of the (embed, mlp) kernel (unfactored below
  # 128) is sharded like the kernel; its (1,) placeholders are replicated.
  mlp = lambda tree: tree["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
  moments = trainer.state_shardings.opt_state[0]
  spec = jax.sharding.PartitionSpec(None, "model")
  assert mlp(trainer.state_shardings.params).spec == spec
  assert mlp(moments.v).spec == spec
  assert mlp(moments.v_col).spec == jax.sharding.PartitionSpec()


@pytest.mark.slow
def test_resume_is_bit_identical(tmp_path):
  full = _trainer(tmp_path / "full", 4)
  full_state, _ = full.run()
  full.close()
  first = _trainer(tmp_path / "split", 2)
  first.run()
  first.close()
  resumed = _trainer(tmp_path / "split", 4)
  assert resumed.checkpointer.latest_step() == 2
  resumed_state, _ = resumed.run()
  resumed.close()
  assert int(resumed_state.step) == 4
  assert _leaves_equal(jax.device_get(full_state.params),
                       jax.device_get(resumed_state.params))
  assert _leaves_equal(jax.device_get(full_state.opt_state),
                       jax.device_get(resumed_state.opt_state))
  lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 4  # Steps 1-2, then 3-4 after the resume.


def test_batch_not_divisible_by_data_axis_fails_before_compiling(tmp_path):
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=4, model=2))
  with pytest.raises(ValueError, match="divisible by the data mesh size 4"):
    _trainer(tmp_path, 1, mesh=mesh, batch_size=6)


def test_unshardable_dimension_names_the_parameter():
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=1, model=8))
  odd = network.Transformer(config_lib.t5_1_1("tiny", vocab_size=60))
  with pytest.raises(ValueError, match=r"Cannot shard .*(token_embedder|logits_dense).*not divisible by mesh axis .model."):
    partitioning.param_shardings(scoring.abstract_params(odd), mesh)


def test_checkpoint_of_another_model_size_is_rejected(tmp_path):
  small = _trainer(tmp_path, 1)
  small.run()
  small.close()
  other = network.Transformer(CFG.replace(mlp_dim=256))
  with pytest.raises(ValueError, match="written by another model"):
    _trainer(tmp_path, 2, model=other).run()


def test_microbatch_accumulation_equals_full_batch():
  sft = objectives.SFT(models=MODELS)
  examples = synthetic.generate("validation", 8)
  vocab = synthetic.vocabulary()

  def encode(texts, length):
    out = np.zeros((len(texts), length), np.int32)
    for i, t in enumerate(texts):
      ids = vocab.encode(t)[: length - 1] + [1]
      out[i, : len(ids)] = ids
    return out

  # Equal target lengths per row, so the token-mean loss splits evenly.
  batch = {"inputs": encode([e["inputs"] for e in examples], 64),
           "targets": np.tile(encode([examples[0]["targets"]], 32), (8, 1))}
  params = _params(0)
  rng = jax.random.PRNGKey(0)
  grads = jax.jit(functools.partial(step_lib.compute_grads, sft),
                  static_argnums=(4,))
  full, m_full = grads(params, types.Frozen(), batch, rng, 1)
  micro, m_micro = grads(params, types.Frozen(), batch, rng, 4)
  np.testing.assert_allclose(float(m_micro["loss"]), float(m_full["loss"]),
                             rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(micro),
                  jax.tree_util.tree_leaves(full)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="not divisible by num_microbatches=3"):
    step_lib.compute_grads(sft, params, types.Frozen(), batch, rng, 3)


def test_trainer_compiles_its_step_once_before_the_first_step(
    tmp_path, caplog, capsys):
  # The step is compiled ahead of its first call (then the host memory the
  # compiler freed is given back, ipo_md.host_memory); the call reuses it.
  trainer = _trainer(tmp_path, 2)
  with jax.log_compiles(True), caplog.at_level("WARNING"):
    state, _ = trainer.run()
  trainer.close()
  assert int(state.step) == 2
  compiles = [r.getMessage() for r in caplog.records
              if "Finished XLA compilation of jit(train_step)" in r.getMessage()]
  assert len(compiles) == 1, compiles
  assert re.search(r"\[test\] compiled the train step in \d+\.\d s",
                   capsys.readouterr().out)
