# Copyright 2025 The ipo-md Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""`ipo_md.optim` against a numpy Adafactor written from the paper.

The reference follows Shazeer & Stern 2018 (arXiv 1804.04235), Algorithms 4
and 5, with T5's settings: second-moment decay 1 - t^-0.8, factored row/column
*sums* for matrices (V = R C / 1'R), update clipping at d = 1, relative step
size max(eps2, RMS(x)) * lr, no momentum.
"""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ipo_md import optim

EPS1, EPS2 = 1e-30, 1e-3
MIN_DIM = 4  # Factor matrices whose two largest dims are >= 4.


def _rms(x):
  return np.sqrt(np.mean(np.square(x)))


class NumpyAdafactor:
  """Adafactor, float64, one parameter at a time, from the paper."""

  def __init__(self, lr_fn, *, decay=0.8, clip=1.0, scale_by_param=True):
    self.lr_fn, self.decay, self.clip = lr_fn, decay, clip
    self.scale_by_param = scale_by_param
    self.t = 0
    self.moments = {}

  def _factored(self, shape):
    return len(shape) == 2 and min(shape) >= MIN_DIM

  def step(self, params, grads):
    self.t += 1
    rho = 1.0 - self.t ** -self.decay  # 0 at t = 1: V_1 = g^2.
    lr = self.lr_fn(self.t - 1)        # optax counts steps from 0.
    new = {}
    for name, x in params.items():
      g = np.asarray(grads[name], np.float64)
      g2 = g * g + EPS1
      if self._factored(x.shape):
        r, c = self.moments.get(name, (np.zeros(x.shape[0]),
                                       np.zeros(x.shape[1])))
        r = rho * r + (1 - rho) * g2.sum(axis=1)   # Row sums.
        c = rho * c + (1 - rho) * g2.sum(axis=0)   # Column sums.
        self.moments[name] = (r, c)
        v = np.outer(r, c) / r.sum()
      else:
        v = rho * self.moments.get(name, np.zeros(x.shape)) + (1 - rho) * g2
        self.moments[name] = v
      u = g / np.sqrt(v)
      if self.clip is not None:
        u = u / max(1.0, _rms(u) / self.clip)
      alpha = lr * (max(EPS2, _rms(x)) if self.scale_by_param else 1.0)
      new[name] = x - alpha * u
    return new


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {
      "kernel": rng.normal(0, 0.5, (8, 12)),      # Factored.
      "narrow": rng.normal(0, 0.5, (3, 6)),       # 3 < MIN_DIM: unfactored.
      "bias": rng.normal(0, 0.5, (12,)),          # Vectors: unfactored.
      "zeros": np.zeros((5,)),                    # RMS 0 -> eps2 floor.
  }
  # Gradients of very different scales per step, and one large outlier so
  # that update clipping is active on some steps.
  grads = []
  for t in range(3):
    g = {k: rng.normal(0, 10.0 ** (t - 1), v.shape) for k, v in params.items()}
    g["kernel"][0, 0] *= 50.0
    grads.append(g)
  return params, grads


def _run_optax(tx, params, grads):
  p = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
  state = tx.init(p)
  update = jax.jit(tx.update)
  out = []
  for g in grads:
    u, state = update({k: jnp.asarray(v, jnp.float32) for k, v in g.items()},
                      state, p)
    p = optax.apply_updates(p, u)
    out.append({k: np.asarray(v) for k, v in p.items()})
  return out, state


class AdafactorTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("t5x_defaults", dict(), dict()),
      ("no_clipping", dict(clipping_threshold=None), dict(clip=None)),
      ("no_param_scale", dict(multiply_by_parameter_scale=False),
       dict(scale_by_param=False)),
      ("decay_0.5", dict(decay_rate=0.5), dict(decay=0.5)),
  )
  def test_three_steps_match_numpy(self, kwargs, ref_kwargs):
    params, grads = _problem()
    lr = 0.01
    tx = optim.adafactor_t5(lr, min_dim_size_to_factor=MIN_DIM, **kwargs)
    got, _ = _run_optax(tx, params, grads)
    ref = NumpyAdafactor(lambda step: lr, **ref_kwargs)
    p = dict(params)
    for t in range(3):
      p = ref.step(p, grads[t])
      for k in p:
        np.testing.assert_allclose(got[t][k], p[k], rtol=2e-5, atol=1e-7,
                                   err_msg=f"step {t + 1}, {k}")
    # Every parameter moved.
    for k in params:
      self.assertGreater(np.abs(got[-1][k] - params[k]).max(), 1e-5, k)

  def test_clipping_is_exercised(self):
    # The step-1 update of "kernel" has RMS > 1 (so clipping changes it).
    params, grads = _problem()
    g = grads[0]["kernel"]
    v = np.outer((g * g).sum(1), (g * g).sum(0)) / (g * g).sum()
    self.assertGreater(_rms(g / np.sqrt(v)), 1.05)
    clipped, _ = _run_optax(optim.adafactor_t5(
        0.01, min_dim_size_to_factor=MIN_DIM), params, grads[:1])
    unclipped, _ = _run_optax(optim.adafactor_t5(
        0.01, min_dim_size_to_factor=MIN_DIM, clipping_threshold=None),
                              params, grads[:1])
    self.assertFalse(np.allclose(clipped[0]["kernel"],
                                 unclipped[0]["kernel"]))

  def test_factored_state_is_rows_plus_columns(self):
    params, grads = _problem()
    _, state = _run_optax(optim.adafactor_t5(
        0.01, min_dim_size_to_factor=MIN_DIM), params, grads[:1])
    shapes = sorted(tuple(x.shape) for x in jax.tree.leaves(state)
                    if np.ndim(x) > 0 and np.size(x) > 1)
    # kernel: rows (8,) and columns (12,), never the full (8, 12);
    # narrow (3, 6), bias (12,) and zeros (5,) keep a full second moment.
    self.assertNotIn((8, 12), shapes)
    for shape in ((8,), (12,), (3, 6), (5,)):
      self.assertIn(shape, shapes)

  def test_default_factors_only_128_and_up(self):
    # T5X's rule: a [128, 128] kernel is factored, a [127, 256] one is not.
    p = {"big": jnp.zeros((128, 128)), "small": jnp.zeros((127, 256))}
    state = optim.adafactor_t5(1e-3).init(p)
    shapes = [tuple(x.shape) for x in jax.tree.leaves(state)]
    self.assertNotIn((128, 128), shapes)
    self.assertIn((127, 256), shapes)

  def test_schedule_is_applied_per_step(self):
    params, grads = _problem()
    schedule = optim.make_schedule("warmup_constant", base_learning_rate=0.02,
                                   warmup_steps=2)
    tx = optim.adafactor_t5(schedule, min_dim_size_to_factor=MIN_DIM)
    got, _ = _run_optax(tx, params, grads)
    ref = NumpyAdafactor(lambda step: 0.02 * min(step / 2, 1.0))
    p = dict(params)
    for t in range(3):
      p = ref.step(p, grads[t])
      for k in p:
        np.testing.assert_allclose(got[t][k], p[k], rtol=2e-5, atol=1e-7,
                                   err_msg=f"step {t + 1}, {k}")
    # The first step has learning rate 0: nothing moves.
    for k in params:
      np.testing.assert_allclose(got[0][k], params[k], rtol=0, atol=1e-7)

  @parameterized.named_parameters(
      ("decay_zero", dict(decay_rate=0.0), "decay_rate"),
      ("decay_big", dict(decay_rate=1.5), "decay_rate"),
      ("clip_small", dict(clipping_threshold=0.5), "clipping_threshold"),
  )
  def test_bad_arguments(self, kwargs, field):
    with self.assertRaisesRegex(ValueError, field):
      optim.adafactor_t5(1e-3, **kwargs)


class ScheduleTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("constant", "constant", 0.5, 0,
       {0: 0.5, 1: 0.5, 1000: 0.5}),
      ("warmup_constant", "warmup_constant", 0.1, 10,
       {0: 0.0, 5: 0.05, 9: 0.09, 10: 0.1, 500: 0.1}),
      ("warmup_constant_no_warmup", "warmup_constant", 0.1, 0,
       {0: 0.1, 7: 0.1}),
      ("rsqrt", "rsqrt", 1.0, 100,
       {0: 0.1, 50: 0.1, 100: 0.1, 400: 0.05, 10_000: 0.01}),
      # Warm-up to 0.2 over 10 steps, then 0.1 (1 + cos(pi t / 100)) for
      # t = step - 10 of 100 decay steps: 0.2, 0.1 at t = 50, 0 at t = 100.
      ("warmup_cosine", "warmup_cosine", 0.2, 10,
       {0: 0.0, 5: 0.1, 10: 0.2, 35: 0.1 * (1 + np.cos(np.pi / 4)),
        60: 0.1, 110: 0.0, 500: 0.0}),
  )
  def test_values(self, kind, base, warmup, expected):
    schedule = optim.make_schedule(kind, base_learning_rate=base,
                                   warmup_steps=warmup, decay_steps=110)
    for step, value in expected.items():
      self.assertAlmostEqual(float(schedule(step)), value, places=6,
                             msg=f"{kind} at step {step}")
      # Traced steps give the same value (schedules run inside jit).
      self.assertAlmostEqual(float(jax.jit(schedule)(jnp.int32(step))),
                             value, places=6)

  @parameterized.named_parameters(
      ("zero_lr", dict(kind="constant", base_learning_rate=0.0),
       "base_learning_rate"),
      ("negative_lr", dict(kind="constant", base_learning_rate=-1.0),
       "base_learning_rate"),
      ("negative_warmup", dict(kind="warmup_constant", base_learning_rate=1.0,
                               warmup_steps=-1), "warmup_steps"),
      ("rsqrt_no_warmup", dict(kind="rsqrt", base_learning_rate=1.0),
       "warmup_steps > 0"),
      ("cosine_too_short", dict(kind="warmup_cosine", base_learning_rate=1.0,
                                warmup_steps=10, decay_steps=10),
       "decay_steps=10, which must exceed warmup_steps=10"),
      ("unknown", dict(kind="cosine", base_learning_rate=1.0),
       "Unknown learning-rate schedule 'cosine'"),
  )
  def test_bad_arguments(self, kwargs, message):
    with self.assertRaisesRegex(ValueError, message):
      optim.make_schedule(**kwargs)


if __name__ == "__main__":
  absltest.main()
