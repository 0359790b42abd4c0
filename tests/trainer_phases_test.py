"""The step in three phases (sample / preference / update), the way the
Trainer compiles it to time each phase: it samples the same tokens and makes
the same update as the one-program step, and the Trainer logs the phases'
times without changing what it trains."""

import functools
import io
import json
import pathlib
import re

import jax
import numpy as np
import pytest

import ipo_md_tasks  # noqa: F401  (registers the synthetic task)
from ipo_md import checkpoints
from ipo_md import losses
from ipo_md import partitioning
from ipo_md import types
from ipo_md.data import pipeline as data_pipeline
from ipo_md.model import scoring
from ipo_md.preference import oracle
from ipo_md.trainer import loop as loop_lib
from ipo_md.trainer import models as models_lib
from ipo_md.trainer import objectives
from ipo_md.trainer import policy_gradient
from ipo_md.trainer import step as step_lib
from ipo_md.trainer import train_state as train_state_lib
from tests import trainer_test

# The run-layer tests' model (smaller than "tiny"), prompts and optimizer.
MODEL, MODELS = trainer_test.MODEL, trainer_test.MODELS
SAMPLING = trainer_test.SAMPLING
_prompts, _tx = trainer_test._prompts, trainer_test._tx  # pylint: disable=protected-access
GOLD = oracle.FactsOracle()

OBJECTIVES = {
    "ipo_md": objectives.OnlinePairwise(
        models=MODELS, loss_fn=functools.partial(losses.ipo_loss, tau=0.5),
        sampling=SAMPLING, preference=GOLD, beta=0.3,
        label_mode="bernoulli"),  # The label phase draws random numbers.
    "nash_md_pg": policy_gradient.NashMDPG(
        models=MODELS, sampling=SAMPLING, tau=0.05, beta=0.125,
        preference=GOLD),
    "rlhf": policy_gradient.RLHF(
        models=MODELS, sampling=SAMPLING, tau=0.2,
        reward=policy_gradient.ScoreReward(scorer=GOLD)),
}


def test_objectives_that_sample_have_phases_and_the_others_not():
  for name, objective in OBJECTIVES.items():
    assert step_lib.has_phases(objective), name
  assert not step_lib.has_phases(objectives.SFT(models=MODELS))


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_prepare_is_label_of_sample(name):
  objective = OBJECTIVES[name]
  params = scoring.init_params(MODEL, jax.random.PRNGKey(0))
  frozen = types.Frozen(reference=scoring.init_params(MODEL,
                                                      jax.random.PRNGKey(1)))
  batch = {"inputs": _prompts()}
  rng = jax.random.PRNGKey(5)
  fused, m_fused = jax.jit(objective.prepare)(params, frozen, batch, rng)
  samples = jax.jit(objective.sample)(params, frozen, batch, rng)
  split, m_split = jax.jit(objective.label)(params, frozen, batch, samples,
                                            rng)
  assert set(fused) == set(split) and set(m_fused) == set(m_split)
  for k in fused:
    np.testing.assert_array_equal(fused[k], split[k], err_msg=k)
  for k in m_fused:
    np.testing.assert_array_equal(m_fused[k], m_split[k], err_msg=k)


# One microbatch of IPO-MD is test_trainer_logs_each_phase_and_trains_the_same.
@pytest.mark.parametrize("name,num_microbatches",
                         [("ipo_md", 2), ("nash_md_pg", 1), ("rlhf", 2)])
def test_phases_make_the_one_program_step(name, num_microbatches):
  """Two steps through the three phases equal two steps of train_step: the
  same tokens (the labels' inputs), the same metrics and parameters up to
  float rounding (XLA fuses the two forms differently)."""
  objective = OBJECTIVES[name]
  tx, schedule = _tx()
  micro = dict(objective=objective, num_microbatches=num_microbatches)
  update = dict(tx=tx, schedule=schedule)
  fused_fn = jax.jit(functools.partial(step_lib.train_step, **micro,
                                       **update))
  sample_fn = jax.jit(functools.partial(step_lib.sample_phase, **micro))
  label_fn = jax.jit(functools.partial(step_lib.label_phase, **micro))
  update_fn = jax.jit(functools.partial(step_lib.update_phase, **micro,
                                        **update))
  params = scoring.init_params(MODEL, jax.random.PRNGKey(0))
  frozen = types.Frozen(reference=scoring.init_params(MODEL,
                                                      jax.random.PRNGKey(1)))
  batch = {"inputs": _prompts()}
  fused = phased = train_state_lib.create(params, tx, seed=0)
  for _ in range(2):
    fused, m_fused = fused_fn(fused, batch, frozen)
    samples = sample_fn(phased, batch, frozen)
    # The tokens train_step samples inside: prepare with the step's rng.
    rng = jax.random.fold_in(phased.rng, phased.step)
    if num_microbatches > 1:
      half = {"inputs": batch["inputs"][:4]}
      mb_rng = jax.random.fold_in(jax.random.fold_in(rng, 0), 0)
      expected, _ = jax.jit(objective.prepare)(phased.params, frozen, half,
                                               mb_rng)
      got = jax.tree_util.tree_map(lambda x: x[0], samples)
    else:
      expected, _ = jax.jit(objective.prepare)(phased.params, frozen, batch,
                                               jax.random.fold_in(rng, 0))
      got = samples
    np.testing.assert_array_equal(got.tokens[:4],
                                  expected["y"][:4])
    prepared, m_prep = label_fn(phased, batch, frozen, samples)
    phased, m_phased = update_fn(phased, prepared, m_prep, frozen)
  assert int(phased.step) == int(fused.step) == 2
  assert set(m_phased) == set(m_fused)
  for k in m_fused:
    np.testing.assert_allclose(m_phased[k], m_fused[k], rtol=1e-4, atol=1e-6,
                               err_msg=k)
  for a, b in zip(jax.tree_util.tree_leaves(phased.params),
                  jax.tree_util.tree_leaves(fused.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _trainer(directory, *, phase_timing, num_steps=4):
  tx, schedule = _tx()
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=1, model=1),
                                jax.devices()[:1])
  data = data_pipeline.DataConfig(task="synthetic_facts_prompts",
                                  split="validation", kind="prompts",
                                  batch_size=8, feature_lengths={"inputs": 64},
                                  seed=3)
  ref = scoring.init_params(MODEL, jax.random.PRNGKey(1))
  _, p_shard = models_lib.param_shardings(MODEL.config, mesh)
  return loop_lib.Trainer(
      name="test", network=MODEL, objective=OBJECTIVES["ipo_md"], tx=tx,
      schedule=schedule, mesh=mesh, data=data,
      loop=loop_lib.LoopConfig(num_steps=num_steps, log_every=2,
                               phase_timing=phase_timing),
      checkpoint=checkpoints.CheckpointConfig(every=0, keep=1),
      directory=pathlib.Path(directory),
      frozen=types.Frozen(reference=jax.device_put(ref, p_shard)),
      frozen_shardings=types.Frozen(reference=p_shard),
      init_params=lambda: scoring.init_params(MODEL, jax.random.PRNGKey(0)))


def _logged(directory):
  lines = (pathlib.Path(directory) / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


def test_trainer_logs_each_phase_and_trains_the_same(tmp_path):
  runs, console = {}, {}
  for timing in (True, False):
    trainer = _trainer(tmp_path / str(timing), phase_timing=timing)
    assert trainer.phased is timing
    trainer.log.stream = io.StringIO()
    runs[timing], _ = trainer.run()
    console[timing] = trainer.log.stream.getvalue()
    trainer.close()
  phased, fused = _logged(tmp_path / "True"), _logged(tmp_path / "False")
  assert [r["step"] for r in phased] == [2, 4]
  for r in phased:  # Step 1 (the compilation) is left out of the means.
    for k in ("timing/sample", "timing/preference", "timing/update",
              "timing/host"):
      assert r[k] >= 0.0, (k, r)
    assert r["timing/sample"] > 0.0 and r["timing/update"] > 0.0
    assert "timing/device" not in r
    # The whole step: its phases and the host's share.
    np.testing.assert_allclose(
        r["timing/step"], r["timing/sample"] + r["timing/preference"]
        + r["timing/update"] + r["timing/host"], rtol=1e-6)
  for r in fused:
    assert r["timing/device"] > 0.0 and "timing/sample" not in r
  assert re.search(r"sample \d+ms preference \d+ms update \d+ms host \d+ms",
                   console[True]), console[True]
  assert re.search(r"device \d+ms host \d+ms", console[False]), console[False]
  for a, b in zip(jax.tree_util.tree_leaves(runs[True].params),
                  jax.tree_util.tree_leaves(runs[False].params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(phased[-1]["loss"], fused[-1]["loss"],
                             rtol=1e-4)


def test_phase_timing_must_be_a_bool():
  with pytest.raises(ValueError, match="phase_timing='yes' must be True or"):
    loop_lib.LoopConfig(num_steps=1, phase_timing="yes")
