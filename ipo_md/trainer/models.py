"""The models of a run, by role, and the one place their shardings come from.

A run declares its models by role: the `policy` being aligned, optionally a
separately loaded `reference`, a pairwise `preference` model p(y > y' | x)
and a Bradley-Terry `reward` model r(x, y). Each has its own `T5Config`, its
own initial checkpoint (any kind `load_initial_params` reads: a params
checkpoint, a Hugging Face folder, a T5X checkpoint or a training stage) and,
for the preference and reward roles, a head that says how the network is read
(`ipo_md.preference.learned`). All live on the one mesh; their parameter
shardings come from `param_shardings` and nowhere else.

Stages (see `pipeline`) say which role they train and which roles they read
frozen, and from where: an earlier stage's final parameters, or the role's
initial checkpoint (`INITIAL`).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax

from ipo_md import partitioning
from ipo_md.model import config as config_lib
from ipo_md.model import network
from ipo_md.model import scoring
from ipo_md.preference import learned

POLICY = "policy"
REFERENCE = "reference"
PREFERENCE = "preference"
REWARD = "reward"
ROLES = (POLICY, REFERENCE, PREFERENCE, REWARD)
# Roles a stage can train, and roles a stage can read frozen.
TRAINABLE = (POLICY, PREFERENCE, REWARD)
FROZEN = (REFERENCE, PREFERENCE, REWARD)
# A source naming the role's own initial checkpoint rather than a stage.
INITIAL = "initial"
# The role a frozen role's parameters are trained as (the reference is a
# policy: the SFT model).
TRAINED_AS = {REFERENCE: POLICY, PREFERENCE: PREFERENCE, REWARD: REWARD}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSpec:
  """One model of a run.

  Attributes:
    config: its T5 architecture.
    initial_checkpoint: where its parameters start (None: a trained role
      starts from a random initialisation, a frozen role must come from a
      stage).
    head: for `preference`, a `learned.PairwiseHead`; for `reward`, a
      `learned.RewardHead`; None for policies.
  """

  config: config_lib.T5Config
  initial_checkpoint: str | None = None
  head: Any = None

  def __post_init__(self):
    if not isinstance(self.config, config_lib.T5Config):
      raise ValueError(
          f"ModelSpec.config={self.config!r} must be a T5Config, e.g. "
          "@config.t5_1_1() in gin.")


def check_specs(specs: dict[str, ModelSpec]) -> None:
  """Raises unless the roles and heads of a run's models make sense."""
  unknown = sorted(set(specs) - set(ROLES))
  if unknown:
    raise ValueError(
        f"Unknown model role(s) {unknown} in the run's models; the roles are "
        f"{ROLES}.")
  if not specs:
    raise ValueError(
        "The run declares no model; set train.model_config (the policy) or "
        "train.models = {'policy': @policy/models.ModelSpec(), ...}.")
  if REFERENCE in specs and POLICY not in specs:
    raise ValueError("models['reference'] is declared without a policy; "
                     "declare models['policy'] too.")
  heads = {PREFERENCE: learned.PairwiseHead, REWARD: learned.RewardHead}
  for role, spec in specs.items():
    want = heads.get(role)
    if want is None and spec.head is not None:
      raise ValueError(f"models[{role!r}] has a head ({spec.head!r}); only "
                       "'preference' and 'reward' models take one.")
    if want is not None and not isinstance(spec.head, want):
      raise ValueError(
          f"models[{role!r}].head={spec.head!r} must be a "
          f"learned.{want.__name__} (how the network is read out).")
  ref = specs.get(REFERENCE)
  if ref is not None and POLICY in specs and (ref.config.vocab_size
                          != specs[POLICY].config.vocab_size):
    raise ValueError(
        f"models['reference'] has vocab_size {ref.config.vocab_size} but the "
        f"policy has {specs[POLICY].config.vocab_size}; the mixture sampler "
        "and the log-ratios need one vocabulary.")


def config_of(role: str, specs: dict[str, ModelSpec]) -> config_lib.T5Config:
  """The architecture of `role` (the reference defaults to the policy's)."""
  if role in specs:
    return specs[role].config
  if role == REFERENCE and POLICY in specs:
    return specs[POLICY].config
  raise ValueError(
      f"The run declares no {role!r} model; add models[{role!r}] = "
      "ModelSpec(config=..., head=...).")


@dataclasses.dataclass(frozen=True)
class Models:
  """What a stage's objective and evaluation are built from.

  Attributes:
    policy: the policy network, or None for a run without a policy (e.g. a
      preference model trained alone).
    reference: the reference network (the policy's unless declared).
    preference: the learned preference model, or None if the run has none.
    reward: the learned reward model, or None.
  """

  policy: network.Transformer | None = None
  reference: network.Transformer | None = None
  preference: learned.PreferenceModel | None = None
  reward: learned.RewardModel | None = None

  def signal(self, name: str):
    """The PreferenceSignal a config names: 'preference' (the learned PM) or
    'reward' (the reward model's Bradley-Terry preference)."""
    if name == PREFERENCE:
      if self.preference is None:
        raise ValueError(
            "The objective uses the learned preference model, but the run "
            "declares no models['preference']; add one or bind the "
            "objective's preference to a signal (e.g. @oracle.FactsOracle()).")
      return self.preference
    if name == REWARD:
      if self.reward is None:
        raise ValueError(
            "The objective uses the reward model, but the run declares no "
            "models['reward']; add one.")
      return self.reward.preference()
    raise ValueError(
        f"preference={name!r}: name 'preference' or 'reward', or bind a "
        "PreferenceSignal object.")


def build(specs: dict[str, ModelSpec]) -> Models:
  """The networks and learned signals of a run's declared models."""
  check_specs(specs)
  pm = rm = None
  if PREFERENCE in specs:
    pm = learned.PreferenceModel(
        network=network.Transformer(specs[PREFERENCE].config),
        head=specs[PREFERENCE].head)
  if REWARD in specs:
    rm = learned.RewardModel(network=network.Transformer(
        specs[REWARD].config), head=specs[REWARD].head)
  policy = ref = None
  if POLICY in specs:
    policy = network.Transformer(specs[POLICY].config)
    ref = network.Transformer(config_of(REFERENCE, specs))
  return Models(policy=policy, reference=ref, preference=pm, reward=rm)


def param_shardings(config: config_lib.T5Config, mesh: jax.sharding.Mesh):
  """(abstract params, shardings) of a T5 on `mesh`, derived from the
  layers' logical axes: the one place a model's shardings come from.

  Returns:
    (unboxed ShapeDtypeStruct tree, NamedSharding tree).
  """
  boxed = scoring.abstract_params(network.Transformer(config))
  return nn.unbox(boxed), partitioning.param_shardings(boxed, mesh)


def random_params(config: config_lib.T5Config, mesh: jax.sharding.Mesh,
                  seed: int):
  """A random initialisation created directly in its shardings."""
  _, shardings = param_shardings(config, mesh)
  net = network.Transformer(config)
  return jax.jit(lambda: scoring.init_params(net, jax.random.PRNGKey(seed)),
                 out_shardings=shardings)()


def load_params(path: str, config: config_lib.T5Config,
                mesh: jax.sharding.Mesh, *, step: int | None = None):
  """Parameters from any checkpoint kind, checked against `config` before a
  tensor is read and placed directly in their shardings. `step` picks a
  step of a training stage (default: its latest)."""
  from ipo_md.checkpoints import params_io  # pylint: disable=g-import-not-at-top

  _, shardings = param_shardings(config, mesh)
  if step is not None:
    from ipo_md.checkpoints import t5_layout  # pylint: disable=g-import-not-at-top

    saved = params_io.load_train_config(path, step=step)
    t5_layout.check_compatible(saved, config, source=f"{path} (step {step})")
    params, _ = params_io.load_train_params(path, step=step,
                                            shardings=shardings)
    return params
  params, _ = params_io.load_initial_params(path, shardings=shardings,
                                            expected_config=config)
  return params
