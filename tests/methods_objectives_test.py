"""The policy-gradient and offline objectives on tabular policies: sampling in
one call, the RL objective's direction and KL term by hand, the shared
metric names, and every bad input refused when the run is planned."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import ipo_md_tasks  # noqa: F401  (registers the synthetic tasks)
from ipo_md import checkpoints
from ipo_md import losses
from ipo_md import partitioning
from ipo_md import rollouts
from ipo_md import types
from ipo_md.data import pipeline as data_pipeline
from ipo_md.decoding import sampling
from ipo_md.model import config as config_lib
from ipo_md.preference import learned
from ipo_md.preference import oracle
from ipo_md.theory import games
from ipo_md.trainer import loop as loop_lib
from ipo_md.trainer import models as models_lib
from ipo_md.trainer import objectives
from ipo_md.trainer import offline
from ipo_md.trainer import pipeline
from ipo_md.trainer import policy_gradient
from tests import methods_fakes as fakes

ONE_TOKEN = sampling.SamplingConfig(max_decode_length=1)


def _tabular(k):
  net = fakes.TabularNet(vocab_size=k + 1)
  return models_lib.Models(policy=net, reference=net)


# --- Nash-MD-PG: y from the policy, y' from the mixture, one sampler call. --


def test_nash_md_pg_rows_follow_the_policy_and_the_mixture_in_one_call(
    monkeypatch):
  k, beta, n = 4, 0.6, 4000
  theta = np.array([1.2, 0.0, -0.5, 0.3])
  ref = np.array([0.05, 0.15, 0.5, 0.3])
  models = _tabular(k)
  params = fakes.params_of(theta)
  frozen = types.Frozen(reference=fakes.params_of(np.log(ref)))
  calls = []
  real_sample = sampling.sample
  monkeypatch.setattr(rollouts.sampling, "sample",
                      lambda *a, **kw: calls.append(1) or real_sample(*a,
                                                                      **kw))
  objective = policy_gradient.NashMDPG(
      models=models, sampling=ONE_TOKEN, tau=0.1, beta=beta,
      preference=fakes.TabularPreference(np.full((k, k), 0.5)))
  jax.eval_shape(objective.prepare, params, frozen,
                 {"inputs": fakes.prompts(8)}, jax.random.PRNGKey(0))
  assert len(calls) == 1, "y and y' must come from one sampler call"
  # The rows NashMDPG.prepare draws, with the arguments it uses.
  rows = objectives.rollout(models, params, frozen, fakes.prompts(n),
                            jax.random.PRNGKey(1), ONE_TOKEN, beta=beta,
                            policy_repeats=1, mixture_repeats=1)
  actions = np.asarray(rows.tokens[:, 0]) - 1
  pi = games.softmax(theta)
  mix = games.geometric_mixture(pi, ref, beta)
  count = lambda a: np.bincount(a, minlength=k)
  policy_half, mixture_half = count(actions[:n]), count(actions[n:])
  assert stats.chisquare(policy_half, n * pi).pvalue > 1e-4
  assert stats.chisquare(mixture_half, n * mix).pvalue > 1e-4
  # The test has power: each half is far from the other's distribution.
  assert stats.chisquare(mixture_half, n * pi).pvalue < 1e-8
  assert stats.chisquare(policy_half, n * mix).pvalue < 1e-8
  # The sampler's reference log-probs are the reference's, on every row.
  np.testing.assert_allclose(np.asarray(rows.ref.sequence),
                             np.log(ref)[actions], rtol=1e-5)


# --- RLHF: direction and KL term by hand. -------------------------------


def test_rlhf_moves_probability_to_the_rewarded_token():
  k, favourite = 4, 2
  models = _tabular(k)
  reward = np.zeros(k)
  reward[favourite] = 1.0
  objective = policy_gradient.RLHF(
      models=models, sampling=ONE_TOKEN, tau=0.05,
      reward=fakes.TabularReward(reward))
  frozen = types.Frozen(reference=fakes.params_of(np.zeros(k)))
  batch = {"inputs": fakes.prompts(64)}

  @jax.jit
  def sgd(params, key):
    prepared, metrics = objective.prepare(params, frozen, batch, key)
    grads = jax.grad(lambda p: objective.loss(p, frozen, prepared,
                                              None)[0])(params)
    return jax.tree.map(lambda p, g: p - 2.0 * g, params, grads), metrics

  params = fakes.params_of(np.zeros(k))
  rewards = []
  for step in range(40):
    params, metrics = sgd(params, jax.random.PRNGKey(step))
    rewards.append(float(metrics["signal/mean"]))
  pi = games.softmax(np.asarray(params["decoder"]["logits_dense"]["kernel"]
                                )[0, 1:])
  assert pi[favourite] > 0.9, pi
  # From the uniform policy's mean reward 1/4 to nearly 1.
  assert rewards[0] < 0.45 and np.mean(rewards[-5:]) > 0.85, rewards


def _kl_objective(kl_estimator="reward_to_go", tau=0.1):
  return policy_gradient.RLHF(
      models=_tabular(2), sampling=ONE_TOKEN, tau=tau, baseline="none",
      kl_estimator=kl_estimator, reward=fakes.TabularReward(np.zeros(2)))


# Two tokens: EOS (token 1) and A (token 2); pi = (0.8, 0.2), ref uniform.
PI, REF = np.array([0.8, 0.2]), np.array([0.5, 0.5])
LOG_RATIO = np.log(PI / REF)                 # [0.470004, -0.916291]
KL = float(PI @ LOG_RATIO)                   # 0.192745


def test_rlhf_kl_term_on_a_two_token_completion_by_hand():
  """y = (A, EOS) with zero reward: the loss is the KL term alone,
  tau [log pi(A) (lr_A + lr_EOS) + log pi(EOS) lr_EOS] with reward-to-go,
  tau [log pi(A) lr_A + log pi(EOS) lr_EOS] per token."""
  tau = 0.1
  params = fakes.params_of(np.log(PI))
  prepared = {"inputs": fakes.prompts(1), "y": jnp.array([[2, 1]]),
              "mask": jnp.ones((1, 2)),
              "ref_token": jnp.asarray(np.log(REF)[[1, 0]])[None, :],
              "reward": jnp.zeros((1,)), "baseline": jnp.zeros((1,))}
  lr_a, lr_eos = LOG_RATIO[1], LOG_RATIO[0]
  e_a, e_eos = np.array([0.0, 1.0]), np.array([1.0, 0.0])
  cases = {
      "reward_to_go": (np.log(PI[1]) * (lr_a + lr_eos)
                       + np.log(PI[0]) * lr_eos,
                       (lr_a + lr_eos) * (e_a - PI) + lr_eos * (e_eos - PI)),
      "per_token": (np.log(PI[1]) * lr_a + np.log(PI[0]) * lr_eos,
                    lr_a * (e_a - PI) + lr_eos * (e_eos - PI)),
  }
  for estimator, (value, grad) in cases.items():
    objective = _kl_objective(estimator, tau)
    fn = lambda p: objective.loss(p, None, prepared, None)[0]
    np.testing.assert_allclose(float(fn(params)), tau * value, rtol=1e-5)
    np.testing.assert_allclose(fakes.action_grad(jax.grad(fn)(params)),
                               tau * grad, rtol=1e-5, atol=1e-7)
  # The same by hand: lr_A + lr_EOS = -0.446287, log pi(A) = -1.609438,
  # log pi(EOS) = -0.223144, so the loss is 0.1 (0.718270 - 0.104879) and
  # the gradient 0.1 (-0.446287 (-0.8, 0.8) + 0.470004 (0.2, -0.2)).
  np.testing.assert_allclose(tau * cases["reward_to_go"][0], 0.0613391,
                             rtol=1e-5)
  np.testing.assert_allclose(tau * cases["reward_to_go"][1],
                             [0.0451030, -0.0451030], rtol=1e-5)


def test_rlhf_sampled_kl_term_is_tau_times_the_kl_gradient():
  """One-token completions, zero reward: E[grad] = tau grad KL(pi || ref) =
  tau pi (lr - KL) = tau (0.221807, -0.221807), and kl/sampled -> 0.192745."""
  tau = 0.1
  objective = _kl_objective(tau=tau)
  params = fakes.params_of(np.log(PI))
  frozen = types.Frozen(reference=fakes.params_of(np.log(REF)))
  batch = {"inputs": fakes.prompts(256)}

  def one(key):
    prepared, metrics = objective.prepare(params, frozen, batch, key)
    grads = jax.grad(lambda p: objective.loss(p, frozen, prepared,
                                              None)[0])(params)
    return grads, metrics["kl/sampled"]

  grads, kls = jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(0),
                                                       64))
  grads = fakes.action_grad(grads)
  expected = tau * PI * (LOG_RATIO - KL)
  np.testing.assert_allclose(expected, [0.0221807, -0.0221807], rtol=1e-4)
  for value, draws in ((expected, np.asarray(grads)), (KL, np.asarray(kls))):
    sem = draws.std(axis=0, ddof=1) / np.sqrt(draws.shape[0])
    assert np.all(np.abs(draws.mean(axis=0) - value) <= 5 * sem + 1e-6), (
        draws.mean(axis=0), value)


def test_rlhf_baselines_by_hand():
  # Rows [all prompts] x 3 samples: prompt 0 has rewards (1, 4, 7), prompt 1
  # (2, 5, 8).
  reward = jnp.array([1.0, 2.0, 4.0, 5.0, 7.0, 8.0])
  make = lambda baseline: policy_gradient.RLHF(
      models=_tabular(2), sampling=ONE_TOKEN, tau=0.1, baseline=baseline,
      samples_per_prompt=3, reward=fakes.TabularReward(np.zeros(2)))
  np.testing.assert_allclose(make("leave_one_out")._baseline(reward, 2),
                             [5.5, 6.5, 4.0, 5.0, 2.5, 3.5])
  np.testing.assert_allclose(make("batch_mean")._baseline(reward, 2),
                             (27.0 - reward) / 5)
  np.testing.assert_allclose(make("none")._baseline(reward, 2), 0.0)


def test_score_reward_is_the_oracles_score():
  gold = oracle.FactsOracle()
  cfg = data_pipeline.DataConfig(
      task="synthetic_facts_comparisons", split="validation", kind="pairs",
      batch_size=4, feature_lengths={"inputs": 64, "targets": 32})
  batch = data_pipeline.load_batch(cfg, 4)
  reward = policy_gradient.ScoreReward(scorer=gold, scale=2.0)
  np.testing.assert_allclose(
      reward(None, batch["inputs"], batch["chosen"]),
      2.0 * gold.score(batch["inputs"], batch["chosen"]), rtol=1e-6)
  with pytest.raises(ValueError, match="has no score"):
    policy_gradient.ScoreReward(scorer=object())


# --- The shared metric names. ---------------------------------------------

SHARED = {"loss", "kl/sampled", "signal/mean", "rewards/margin",
          "samples/length", "samples/eos_rate"}


def _all_objectives(k):
  models = _tabular(k)
  prefs = fakes.TabularPreference(np.full((k, k), 0.5))
  pair = lambda fn: functools.partial(fn, tau=0.5)
  online = lambda fn, beta=0.0: objectives.OnlinePairwise(
      models=models, loss_fn=pair(fn), sampling=ONE_TOKEN, beta=beta,
      preference=prefs)
  return {
      "online_ipo": online(losses.ipo_loss),
      "ipo_md": online(losses.ipo_loss, 0.25),
      "online_dpo": online(losses.dpo_loss),
      "online_slic": online(losses.slic_loss),
      "nash_md_pg": policy_gradient.NashMDPG(
          models=models, sampling=ONE_TOKEN, tau=0.1, preference=prefs),
      "rlhf": policy_gradient.RLHF(
          models=models, sampling=ONE_TOKEN, tau=0.1,
          reward=fakes.TabularReward(np.arange(k, dtype=float))),
      **{f"offline_{name}": offline.OfflinePairwise(
          models=models, loss_fn=pair(fn), sampling=ONE_TOKEN)
         for name, fn in (("ipo", losses.ipo_loss), ("dpo", losses.dpo_loss),
                          ("slic", losses.slic_loss))},
  }


@pytest.mark.parametrize("name", list(_all_objectives(3)))
def test_every_method_logs_the_shared_metric_names(name):
  k = 3
  objective = _all_objectives(k)[name]
  params = fakes.params_of(np.zeros(k))
  frozen = types.Frozen(reference=fakes.params_of(np.zeros(k)))
  batch = {"inputs": fakes.prompts(4)}
  if objective.batch_kind == "pairs":
    batch.update(chosen=jnp.full((4, 1), 2), rejected=jnp.full((4, 1), 3),
                 label=jnp.ones((4,)))
  prepared, prep_metrics = jax.eval_shape(
      objective.prepare, params, frozen, batch, jax.random.PRNGKey(0))
  _, metrics = jax.eval_shape(objective.loss, params, frozen, prepared,
                              jax.random.PRNGKey(1))
  names = set(prep_metrics) | set(metrics) | {"loss"}
  assert SHARED <= names, SHARED - names


# --- Bad input: refused by pipeline.plan, before anything trains. ---------

CFG = config_lib.T5Config(vocab_size=64, emb_dim=32, num_heads=4, head_dim=8,
                          mlp_dim=64, num_encoder_layers=1,
                          num_decoder_layers=1)
T = 8
SAMPLING = sampling.SamplingConfig(max_decode_length=T)
RM_HEAD = learned.RewardHead(input_length=64 + T + 1, readout=(62,))


def _data(kind):
  task = {"sft": "synthetic_facts_sft", "pairs": "synthetic_facts_comparisons",
          "prompts": "synthetic_facts_prompts"}[kind]
  lengths = {"inputs": 64} if kind == "prompts" else {"inputs": 64,
                                                      "targets": T}
  return data_pipeline.DataConfig(task=task, split="validation", kind=kind,
                                  batch_size=8, feature_lengths=lengths)


def _stage(name, objective, kind, **kw):
  return pipeline.Stage(
      name=name, objective=objective, data=_data(kind),
      loop=loop_lib.LoopConfig(num_steps=2),
      checkpoint=checkpoints.CheckpointConfig(every=0, keep=2), **kw)


SFT_STAGE = _stage("sft", objectives.SFT, "sft")
GOLD_REWARD = policy_gradient.ScoreReward(scorer=oracle.FactsOracle())


def _method(objective, kind="prompts", frozen=None):
  return _stage("method", objective, kind, init="sft",
                frozen={"reference": "sft"} if frozen is None else frozen)


def _plan_fails(method_stage, pattern, specs=None, trace=False):
  specs = specs or {"policy": models_lib.ModelSpec(config=CFG)}
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=1, model=1),
                                jax.devices()[:1])
  with pytest.raises(ValueError, match=pattern) as raised:
    pipeline.plan(models=specs, stages=[SFT_STAGE, method_stage], mesh=mesh,
                  trace=trace)
  assert "stage 'method'" in str(raised.value)


def _online(**kw):
  kw.setdefault("loss_fn", functools.partial(losses.ipo_loss, tau=0.5))
  return functools.partial(objectives.OnlinePairwise, sampling=SAMPLING,
                           preference=oracle.FactsOracle(), **kw)


def _nash(**kw):
  kw.setdefault("tau", 0.1)
  return functools.partial(policy_gradient.NashMDPG, sampling=SAMPLING,
                           preference=oracle.FactsOracle(), **kw)


def _rlhf(**kw):
  kw.setdefault("tau", 0.1)
  kw.setdefault("reward", GOLD_REWARD)
  return functools.partial(policy_gradient.RLHF, sampling=SAMPLING, **kw)


def _offline(tau=0.5):
  return functools.partial(offline.OfflinePairwise,
                           loss_fn=functools.partial(losses.dpo_loss, tau=tau))


@pytest.mark.parametrize("objective,pattern", [
    (_online(beta=1.5), r"OnlinePairwise.beta=1.5 must be a float in \[0, 1\]"),
    (_online(beta=-0.1), r"beta=-0.1 must be a float in \[0, 1\]"),
    (_nash(beta=2.0), r"NashMDPG.beta=2.0 must be a float in \[0, 1\]"),
    (_online(loss_fn=functools.partial(losses.ipo_loss, tau=0.0)),
     r"OnlinePairwise.loss_fn: tau=0.0 must be a finite Python float > 0"),
    (_nash(tau=0.0), r"NashMDPG.tau=0.0 must be a finite float > 0"),
    (_rlhf(tau=-1.0), r"RLHF.tau=-1.0 must be a finite float > 0"),
    (_nash(samples_per_prompt=1),
     r"NashMDPG.samples_per_prompt=1: Nash-MD-PG needs an even number >= 2"),
    (_rlhf(samples_per_prompt=1),
     r"baseline='leave_one_out' needs samples_per_prompt >= 2"),
    (_rlhf(baseline="mean"), r"RLHF.baseline='mean'; choose one of"),
    (_nash(kl_estimator="k3"), r"NashMDPG.kl_estimator='k3'; choose one of"),
    (_rlhf(reward="preference"), r"RLHF.reward='preference' must be 'reward'"),
])
def test_bad_hyper_parameters_are_refused_when_planned(objective, pattern):
  _plan_fails(_method(objective), pattern)


def test_offline_tau_must_be_positive():
  _plan_fails(_method(_offline(tau=-2.0), kind="pairs"),
              r"OfflinePairwise.loss_fn: tau=-2.0 must be a finite")


def test_an_offline_method_bound_to_a_prompts_task():
  _plan_fails(_method(_offline()),
              r"its objective OfflinePairwise reads 'pairs' batches but its "
              r"data is kind 'prompts' \(task 'synthetic_facts_prompts'\)")


def test_an_online_method_bound_to_a_pairs_task():
  _plan_fails(_method(_nash(), kind="pairs"),
              r"NashMDPG reads 'prompts' batches but its data is kind 'pairs'")


def test_an_rl_objective_without_a_reward_model():
  _plan_fails(_method(_rlhf(reward="reward")),
              r"RLHF uses the reward model \(reward='reward'\), but the run "
              r"declares no models\['reward'\]")
  # Declared, but the stage does not read it.
  specs = {"policy": models_lib.ModelSpec(config=CFG),
           "reward": models_lib.ModelSpec(config=CFG, head=RM_HEAD)}
  _plan_fails(_method(_rlhf(reward="reward")),
              r"read the frozen \['reward'\] model\(s\), which the stage does "
              r"not provide", specs=specs)


def test_a_sound_run_of_every_new_method_plans_and_traces():
  specs = {"policy": models_lib.ModelSpec(config=CFG),
           "reward": models_lib.ModelSpec(config=CFG, head=RM_HEAD)}
  rm = _stage("rm", objectives.RewardModelTraining, "pairs", trains="reward",
              init="initial")
  stages = [
      SFT_STAGE, rm,
      _stage("nash", _nash(beta=0.25), "prompts", init="sft",
             frozen={"reference": "sft"}),
      _stage("rl", _rlhf(reward="reward"), "prompts", init="sft",
             frozen={"reference": "sft", "reward": "rm"}),
      _stage("offline", _offline(), "pairs", init="sft",
             frozen={"reference": "sft"})]
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=1, model=1),
                                jax.devices()[:1])
  planned = pipeline.plan(models=specs, stages=stages, mesh=mesh, trace=True)
  assert [p.objective.rows_per_example for p in planned[2:]] == [2, 2, 1]
  assert planned[3].objective.reads == ("reference", "reward")
