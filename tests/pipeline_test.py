"""Runs of several models: whole-run validation before anything trains, the
preference-model stage (exact resume, read back bit-identical by a policy
stage), and learned-PM training and use on meshes equal to one device."""

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ipo_md_tasks  # noqa: F401  (registers the synthetic tasks)
from ipo_md import checkpoints
from ipo_md import losses
from ipo_md import optim
from ipo_md import partitioning
from ipo_md import types
from ipo_md.checkpoints import params_io
from ipo_md.data import pipeline as data_pipeline
from ipo_md.decoding import sampling
from ipo_md.model import config as config_lib
from ipo_md.preference import learned
from ipo_md.preference import oracle
from ipo_md.trainer import loop as loop_lib
from ipo_md.trainer import models as models_lib
from ipo_md.trainer import objectives
from ipo_md.trainer import pipeline
from ipo_md.trainer import step as step_lib


# Every mesh of 8 devices with IPO_MD_SLOW=1; the default suite compiles one
# (each mesh costs about 35 s of CPU). trainer_test.py takes (4, 2) and
# pipeline_test.py (2, 4), so the default suite covers both splits.
MESHES = (((8, 1), (4, 2), (2, 4)) if os.environ.get("IPO_MD_SLOW") == "1"
          else ((2, 4),))

CFG = config_lib.T5Config(vocab_size=64, emb_dim=32, num_heads=4, head_dim=8,
                          mlp_dim=64, num_encoder_layers=1,
                          num_decoder_layers=1)
T = 8  # response length
HEAD = learned.PairwiseHead(input_length=64 + 1 + T + 1 + T + 1,
                            readout=(62,),
                            template=learned.Template(first=(60,),
                                                      second=(61,)))
SAMPLING = sampling.SamplingConfig(max_decode_length=T)
# Plans that must fail fast; a generous bound for a loaded 2-core machine.
FAST_S = 60


def _specs(**changes):
  specs = {"policy": models_lib.ModelSpec(config=CFG),
           "preference": models_lib.ModelSpec(config=CFG, head=HEAD)}
  specs.update(changes)
  return {k: v for k, v in specs.items() if v is not None}


def _data(kind, split="validation", batch=8):
  task = {"sft": "synthetic_facts_sft", "pairs": "synthetic_facts_comparisons",
          "prompts": "synthetic_facts_prompts"}[kind]
  lengths = {"inputs": 64} if kind == "prompts" else {"inputs": 64,
                                                      "targets": T}
  return data_pipeline.DataConfig(task=task, split=split, kind=kind,
                                  batch_size=batch, feature_lengths=lengths,
                                  seed=1)


def _loop(steps=2, **kw):
  return loop_lib.LoopConfig(num_steps=steps, log_every=1, **kw)


def _stage(name, objective, kind, *, steps=2, **kw):
  return pipeline.Stage(
      name=name, objective=objective, data=_data(kind), loop=_loop(steps),
      checkpoint=checkpoints.CheckpointConfig(every=0, keep=2),
      optimizer=pipeline.OptimizerConfig(learning_rate=1e-2), **kw)


def _sft(steps=2):
  return _stage("sft", objectives.SFT, "sft", steps=steps)


def _pm(steps=2, **kw):
  return _stage("pm", objectives.PreferenceModelTraining, "pairs",
                steps=steps, trains="preference", init="sft", **kw)


def _online(*, name="ipo", kind="prompts", tau=0.5, frozen=None, **kw):
  objective = functools.partial(
      objectives.OnlinePairwise,
      loss_fn=functools.partial(losses.ipo_loss, tau=tau), sampling=SAMPLING,
      **kw)
  return _stage(name, objective, kind, init="sft",
                frozen={"reference": "sft", "preference": "pm"}
                if frozen is None else frozen)


def _mesh(data=1, model=1):
  return partitioning.make_mesh(
      partitioning.MeshConfig(data=data, model=model),
      jax.devices()[:data * model])


def _plan_fails(stages, pattern, specs=None, trace=False):
  start = time.monotonic()
  with pytest.raises(ValueError, match=pattern):
    pipeline.plan(models=specs or _specs(), stages=stages, mesh=_mesh(),
                  trace=trace)
  assert time.monotonic() - start < FAST_S


# --- Whole-run validation: every mistake before the first stage trains. ----


def test_a_stage_reading_a_model_no_stage_or_checkpoint_provides():
  _plan_fails([_sft(), _pm(), _online(frozen={"reference": "sft",
                                              "preference": "pn"})],
              r"stage 'ipo': reads the preference model from 'pn', which is "
              r"not an earlier stage \(earlier: \['sft', 'pm'\]\) nor "
              r"'initial'; no stage or checkpoint provides it")
  _plan_fails([_sft(), _pm(), _online(frozen={"reference": "initial",
                                              "preference": "pm"})],
              r"stage 'ipo': reads the reference model from 'initial', but "
              r"models\['reference'\] has no initial_checkpoint")
  _plan_fails([_sft(), _pm(), _online(frozen={"reference": "pm",
                                              "preference": "pm"})],
              r"reads the reference model from stage 'pm', which trains the "
              r"preference model, not the policy")
  _plan_fails([_sft(), _online(frozen={"reference": "sft"})],
              r"stage 'ipo': its objective/evaluation read the frozen "
              r"\['preference'\] model\(s\), which the stage does not provide")


def test_a_pairs_task_on_an_online_stage_and_the_reverse():
  _plan_fails([_sft(), _pm(), _online(kind="pairs")],
              r"stage 'ipo': its objective OnlinePairwise reads 'prompts' "
              r"batches but its data is kind 'pairs'")
  wrong = pipeline.Stage(
      name="pm", objective=objectives.PreferenceModelTraining,
      data=data_pipeline.DataConfig(
          task="synthetic_facts_comparisons", split="validation",
          kind="prompts", batch_size=8, feature_lengths={"inputs": 64}),
      loop=_loop(), trains="preference")
  _plan_fails([wrong], r"reads 'pairs' batches but its data is kind "
              r"'prompts'")
  mislabelled = pipeline.Stage(
      name="ipo", objective=functools.partial(
          objectives.OnlinePairwise, preference=oracle.FactsOracle(),
          loss_fn=functools.partial(losses.ipo_loss, tau=0.5),
          sampling=SAMPLING),
      data=data_pipeline.DataConfig(
          task="synthetic_facts_comparisons", split="validation",
          kind="prompts", batch_size=8, feature_lengths={"inputs": 64}),
      loop=_loop(), frozen={"reference": "sft"})
  _plan_fails([_sft(), mislabelled],
              r"task 'synthetic_facts_comparisons' is a 'pairs' task")


@pytest.mark.parametrize("bad,pattern", [
    (dict(beta=1.5), r"stage 'ipo': building its objective: "
     r"OnlinePairwise.beta=1.5 must be a float in \[0, 1\]"),
    (dict(label_mode="hardest"), r"OnlinePairwise.label_mode='hardest'; "
     r"choose one of \('soft', 'bernoulli', 'argmax'\)"),
    (dict(tau=0.0), r"stage 'ipo': building its objective: OnlinePairwise."
     r"loss_fn: tau=0.0 must be a finite Python float > 0"),
])
def test_a_bad_last_stage_is_reported_before_the_first_trains(bad, pattern):
  _plan_fails([_sft(), _pm(), _online(**bad)], pattern, trace=True)


def test_a_template_too_long_for_the_preference_model_fails_when_traced():
  short = _specs(preference=models_lib.ModelSpec(
      config=CFG, head=learned.PairwiseHead(input_length=40, readout=(62,))))
  _plan_fails([_sft(), _pm()], r"stage 'pm': its train step does not trace: "
              r"The preference model input needs up to 81 tokens .* "
              r"input_length is 40", specs=short, trace=True)


def test_optimizer_and_loop_values_are_checked_on_construction():
  with pytest.raises(ValueError, match=r"learning_rate=-0.001 must be a "
                     r"finite float > 0"):
    pipeline.OptimizerConfig(learning_rate=-1e-3)
  with pytest.raises(ValueError, match=r"LoopConfig.num_steps=2.5 must be an "
                     r"int"):
    loop_lib.LoopConfig(num_steps=2.5)
  _plan_fails([_sft(), _sft()], r"stage 'sft': two stages have this name")
  _plan_fails([_sft(), _pm(), _online(frozen={"reference": "sft",
                                              "preference": "pm",
                                              "reward": "pm"})],
              r"stage 'ipo': reads the reward model from stage 'pm', which "
              r"trains the preference model, not the reward")


def test_a_stage_may_start_from_a_model_that_differs_only_in_how_it_computes():
  # Dropout, activation dtype and remat do not change the parameters: a
  # bf16, dropout, remat PM may start from the float32 SFT model.
  compute = CFG.replace(dropout_rate=0.1, dtype="bfloat16", remat="full")
  planned = pipeline.plan(models=_specs(preference=models_lib.ModelSpec(
      config=compute, head=HEAD)), stages=[_sft(), _pm()], mesh=_mesh())
  assert planned[1].init == "sft"
  assert planned[1].network.config == compute
  # Anything that shapes the parameters is refused, and named.
  _plan_fails([_sft(), _pm()],
              r"stage 'pm': init='sft' trained the policy model, whose "
              r"architecture differs from the preference model's "
              r"\(\{'num_heads': \(4, 2\)\}\)",
              specs=_specs(preference=models_lib.ModelSpec(
                  config=compute.replace(num_heads=2), head=HEAD)))


def test_optimizer_momentum_is_adafactors_first_moment():
  grads = [{"w": jnp.array([[0.3, -1.0], [2.0, 0.5]])},
           {"w": jnp.array([[-0.7, 0.2], [0.1, 1.5]])}]

  def updates(tx):
    params = {"w": jnp.ones((2, 2))}
    state, out = tx.init(params), []
    for g in grads:
      u, state = tx.update(g, state, params)
      params = optax.apply_updates(params, u)
      out.append(u["w"])
    return out

  with_momentum, _ = pipeline.OptimizerConfig(
      learning_rate=1e-2, momentum=0.9).build(num_steps=10)
  plain, _ = pipeline.OptimizerConfig(learning_rate=1e-2).build(num_steps=10)
  expected = updates(optim.adafactor_t5(1e-2, momentum=0.9))
  got = updates(with_momentum)
  for u, e in zip(got, expected):
    np.testing.assert_array_equal(u, e)
  # The first moment changes every step (optax keeps an EMA of the scaled
  # updates, not debiased).
  for u, p in zip(got, updates(plain)):
    assert not np.allclose(u, p)
  for bad in (0.0, 1.0, -0.5, True, "0.9"):
    with pytest.raises(ValueError, match=r"OptimizerConfig\.momentum=.* must "
                       r"be None \(no first moment"):
      pipeline.OptimizerConfig(momentum=bad)


def test_a_preference_checkpoint_of_another_size_is_refused_before_training(
    tmp_path):
  other = CFG.replace(mlp_dim=128)
  from ipo_md.model import network, scoring  # pylint: disable=g-import-not-at-top
  params = scoring.init_params(network.Transformer(other),
                               jax.random.PRNGKey(0))
  params_io.save_params(tmp_path / "pm_ckpt", params, other)
  specs = _specs(preference=models_lib.ModelSpec(
      config=CFG, head=HEAD, initial_checkpoint=str(tmp_path / "pm_ckpt")))
  stages = [_sft(), _online(frozen={"reference": "sft",
                                    "preference": "initial"})]
  planned = pipeline.plan(models=specs, stages=stages, mesh=_mesh(),
                          trace=False)
  with pytest.raises(ValueError, match=r"stage 'ipo': the preference model's "
                     r"initial checkpoint: .*another architecture .*mlp_dim: "
                     r"checkpoint 128 vs model 64"):
    pipeline.check_initial_checkpoints(planned, specs)


# --- The preference-model stage and the stages that read it. ---------------


def _leaves_equal(a, b):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  return len(la) == len(lb) and all(
      np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


@pytest.mark.slow
def test_pm_stage_resume_and_a_policy_stage_reading_it(tmp_path, capsys):
  """sft (2) -> pm (4, interrupted after 2) -> ipo (1): the resumed PM equals
  an uninterrupted one bit for bit, the policy stage reads exactly the saved
  PM, and a rerun with fewer PM steps is refused before anything trains."""
  specs, mesh = _specs(), _mesh()
  full_dir, split_dir = tmp_path / "full", tmp_path / "split"
  pipeline.run(model_dir=str(full_dir), models=specs,
               stages=[_sft(), _pm(steps=4)], mesh=mesh)
  pipeline.run(model_dir=str(split_dir), models=specs,
               stages=[_sft(), _pm(steps=2)], mesh=mesh)
  # Continue the same PM stage to 4 steps: it resumes from its step 2.
  pipeline.run(model_dir=str(split_dir), models=specs,
               stages=[_sft(), _pm(steps=4)], mesh=mesh)
  assert "[pm] resumed from" in capsys.readouterr().out
  pm_full, cfg = params_io.load_train_params(full_dir / "pm", step=4)
  pm_split, _ = params_io.load_train_params(split_dir / "pm", step=4)
  assert cfg == CFG
  assert _leaves_equal(pm_full, pm_split), "resumed PM != uninterrupted PM"
  sft_params = params_io.load_train_params(full_dir / "sft", step=2)[0]
  assert not _leaves_equal(sft_params, pm_full), "the PM stage trained"

  # The policy stage's frozen preference is what the PM stage saved.
  stages = [_sft(), _pm(steps=4), _online()]
  planned = pipeline.plan(models=specs, stages=stages, mesh=mesh, trace=False)
  sources = pipeline._Sources(str(full_dir), specs, planned, mesh)  # pylint: disable=protected-access
  trainer = pipeline._trainer(planned[2], str(full_dir), specs, sources, mesh)  # pylint: disable=protected-access
  try:
    assert _leaves_equal(trainer.frozen.preference, pm_full)
    assert _leaves_equal(trainer.frozen.reference,
                         params_io.load_train_params(full_dir / "sft")[0])
  finally:
    trainer.close()

  # Fewer PM steps than saved: refused before any stage trains.
  planned = pipeline.plan(models=specs, stages=[_sft(), _pm(steps=3)],
                          mesh=mesh, trace=False)
  with pytest.raises(ValueError, match=r"stage 'pm': .* already holds a "
                     r"checkpoint at step 4, beyond num_steps=3"):
    pipeline.check_progress(str(full_dir), planned)


def _pm_batch(n=8):
  return {k: v for k, v in data_pipeline.load_batch(_data("pairs"), n).items()
          if k in ("inputs", "chosen", "rejected", "label")}


def _steps_on_mesh(mesh, objective, batch, frozen_params, steps=2):
  """Runs `steps` train steps on `mesh`; returns (params, losses)."""
  from ipo_md import optim  # pylint: disable=g-import-not-at-top
  from ipo_md.model import network, scoring  # pylint: disable=g-import-not-at-top
  from ipo_md.trainer import train_state as train_state_lib  # pylint: disable=g-import-not-at-top

  tx = optim.adafactor_t5(1e-2)
  schedule = optim.make_schedule(base_learning_rate=1e-2)
  net = network.Transformer(CFG)
  _, state_shard, p_shard = loop_lib.abstract_train_state(net, tx, mesh)
  state = jax.jit(lambda: train_state_lib.create(
      scoring.init_params(net, jax.random.PRNGKey(0)), tx, 0),
                  out_shardings=state_shard)()
  frozen = types.Frozen(**{k: jax.device_put(v, p_shard)
                           for k, v in frozen_params.items()})
  frozen_shard = types.Frozen(**{k: p_shard for k in frozen_params})
  batch_shard = partitioning.batch_sharding(mesh)
  step = jax.jit(functools.partial(step_lib.train_step, objective=objective,
                                   tx=tx, schedule=schedule),
                 in_shardings=(state_shard, batch_shard, frozen_shard),
                 out_shardings=(state_shard, partitioning.replicated(mesh)),
                 donate_argnums=(0,))
  batch = {k: jax.device_put(v, batch_shard) for k, v in batch.items()}
  out = []
  for _ in range(steps):
    state, metrics = step(state, batch, frozen)
    out.append(float(metrics["loss"]))
  kernel = state.params["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
  return jax.device_get(state.params), out, kernel.sharding


@pytest.mark.slow
def test_pm_training_and_a_policy_against_the_pm_equal_one_device_on_meshes():
  from ipo_md.model import network, scoring  # pylint: disable=g-import-not-at-top

  built = models_lib.build(_specs())
  pm_objective = objectives.PreferenceModelTraining(models=built)
  online = objectives.OnlinePairwise(
      models=built, loss_fn=functools.partial(losses.ipo_loss, tau=0.5),
      sampling=SAMPLING, beta=0.25)
  net = network.Transformer(CFG)
  frozen = {"reference": scoring.init_params(net, jax.random.PRNGKey(1)),
            "preference": scoring.init_params(net, jax.random.PRNGKey(2))}
  prompts = {"inputs": data_pipeline.load_batch(_data("prompts"), 8)["inputs"]}
  cases = (("pm", pm_objective, _pm_batch(), {}),
           ("ipo_md vs learned pm", online, prompts, frozen))
  for name, objective, batch, frozen_params in cases:
    base, base_losses, _ = _steps_on_mesh(_mesh(), objective, batch,
                                          frozen_params)
    for data, model in MESHES:
      params, losses_, sharding = _steps_on_mesh(
          _mesh(data, model), objective, batch, frozen_params)
      assert len(sharding.device_set) == 8, "the state is spread on 8 devices"
      np.testing.assert_allclose(losses_, base_losses, rtol=1e-4, atol=1e-5,
                                 err_msg=f"{name} on ({data},{model})")
      for a, b in zip(jax.tree_util.tree_leaves(params),
                      jax.tree_util.tree_leaves(base)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5,
                                   err_msg=f"{name} on ({data},{model})")
