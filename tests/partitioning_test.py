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

"""Sharding that is real: activations, parameters and optimizer state.

An IPO-like update step (teacher-forced scores of y and y', the soft-label
IPO loss, its gradient, factored Adafactor) of a tiny T5 is compiled with
`partitioning.sharded_jit` on the 8 fake CPU devices of conftest. The tests
read the shardings off the lowered and compiled programs, and check that
meshes (8,1), (4,2) and (2,4) compute the numbers of one device.
"""

import functools
import re

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from ipo_md import losses
from ipo_md import optim
from ipo_md import partitioning
from ipo_md import rollouts
from ipo_md.decoding import sampling
from ipo_md.model import config as config_lib
from ipo_md.model import network
from ipo_md.model import scoring
from tests import hlo_text

# Heads, MLP width and vocabulary divide the model axis (4); widths >= 16
# are factored by Adafactor here (T5X factors from 128).
CFG = config_lib.T5Config(vocab_size=64, emb_dim=32, num_heads=4, head_dim=8,
                          mlp_dim=64, num_encoder_layers=1,
                          num_decoder_layers=1)
MODEL = network.Transformer(CFG)
B, S, T = 8, 6, 5  # prompts, input length, completion length.
TX = optim.adafactor_t5(1e-2, min_dim_size_to_factor=16)


def _batch():
  rng = np.random.default_rng(0)
  tokens = lambda *shape: rng.integers(2, CFG.vocab_size, shape, np.int32)
  return dict(inputs=tokens(B, S), y=tokens(B, T), yp=tokens(B, T),
              label=rng.uniform(0, 1, B).astype(np.float32),
              ref_y=-rng.uniform(10, 20, B).astype(np.float32),
              ref_yp=-rng.uniform(10, 20, B).astype(np.float32))


def _step(params, opt_state, batch):
  def loss_fn(p):
    both = jnp.concatenate([batch["y"], batch["yp"]], axis=0)
    scores = scoring.score_targets(MODEL, p, batch["inputs"], both)
    loss_B, _ = losses.ipo_loss(scores.sequence[:B], scores.sequence[B:],
                                batch["ref_y"], batch["ref_yp"],
                                batch["label"], tau=0.1)
    return jnp.mean(loss_B)

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = TX.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


@functools.cache
def _initial():
  params = scoring.init_params(MODEL, jax.random.key(0))
  return params, TX.init(params)


def _mesh(data, model):
  devices = jax.devices()[:data * model]
  return partitioning.make_mesh(
      partitioning.MeshConfig(data=data, model=model), devices)


def _compiled_step(mesh):
  boxed = scoring.abstract_params(MODEL)
  p_shard = partitioning.param_shardings(boxed, mesh)
  o_shard = partitioning.opt_state_shardings(TX, boxed, mesh)
  batch_shard = partitioning.batch_sharding(mesh)
  step = partitioning.sharded_jit(
      _step, mesh, in_shardings=(p_shard, o_shard, batch_shard),
      out_shardings=(p_shard, o_shard, partitioning.replicated(mesh)))
  return step, p_shard, o_shard


def _constraints(lowered_text):
  """{(tensor type, sharding)} of the sharding constraints in StableHLO."""
  found = re.findall(
      r"sdy\.sharding_constraint %\S+ <@\w+, (\[[^\]]*\])> : (tensor<[^>]*>)",
      lowered_text)
  return {(t, s) for s, t in found}


class ShardingTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    if len(jax.devices()) < 8:
      raise absltest.SkipTest("needs the 8 fake CPU devices of conftest")
    cls.mesh = _mesh(2, 4)
    step, _, cls.o_shard = _compiled_step(cls.mesh)
    params, opt_state = _initial()
    cls.lowered = step.lower(params, opt_state, _batch())
    cls.compiled = cls.lowered.compile()

  def test_activation_constraints_reach_the_program(self):
    found = _constraints(self.lowered.as_text())
    # The MLP hidden activation [batch, length, mlp] of the encoder (B
    # prompts) and of the decoder (2B completions): batch on "data", mlp on
    # "model".
    for rows, length in ((B, S), (2 * B, T)):
      self.assertIn((f"tensor<{rows}x{length}x64xf32>",
                     '[{"data"}, {}, {"model"}]'), found)
    # Queries [batch, length, heads, kv]: heads on "model".
    self.assertIn((f"tensor<{2 * B}x{T}x4x8xf32>",
                   '[{"data"}, {}, {"model"}, {}]'), found)
    # The decoder's output [batch, length, embed] (the input of the fused
    # output layer): batch on "data", embed replicated.
    self.assertIn((f"tensor<{2 * B}x{T}x32xf32>", '[{"data"}, {}, {}]'),
                  found)
    # Without sharded_jit the same step keeps no constraint at all.
    params, opt_state = _initial()
    plain = jax.jit(_step).lower(params, opt_state, _batch()).as_text()
    self.assertEmpty(_constraints(plain))

  def test_compiled_parameter_and_optimizer_state_shardings(self):
    compiled = self.compiled
    out_params, out_opt, _ = compiled.output_shardings
    mlp = lambda tree: tree["decoder"]["layers_0"]["mlp"]
    wi = mlp(out_params)["wi_0"]["kernel"]  # (embed, mlp)
    wo = mlp(out_params)["wo"]["kernel"]  # (mlp, embed)
    self.assertEqual(wi.spec, P(None, "model"))
    self.assertEqual(wo.spec, P("model", None))
    emb = out_params["token_embedder"]["embedding"]  # (vocab, embed)
    self.assertEqual(emb.spec, P("model", None))
    # Factored second moments keep the kernel's spec minus one dimension:
    # v_row lacks the largest dimension (mlp = 64), v_col the other.
    factored = out_opt[0]
    self.assertEqual(mlp(factored.v_row)["wi_0"]["kernel"].spec, P(None))
    self.assertEqual(mlp(factored.v_col)["wi_0"]["kernel"].spec, P("model"))
    self.assertEqual(mlp(factored.v_row)["wo"]["kernel"].spec, P(None))
    self.assertEqual(mlp(factored.v_col)["wo"]["kernel"].spec, P("model"))
    # The compiled program agrees with what opt_state_shardings asked for.
    for got, want in zip(jax.tree_util.tree_leaves(out_opt),
                         jax.tree_util.tree_leaves(self.o_shard)):
      self.assertTrue(got.is_equivalent_to(want, 1), (got, want))
    # Per-device buffers really are split: the decoder's MLP hidden
    # activation is [2B / 2, T, 64 / 4] on each device.
    self.assertIn(f"f32[{B},{T},16]", compiled.as_text())

  def test_opt_state_shardings_match_the_state_tree(self):
    params, opt_state = _initial()
    shardings = self.o_shard
    self.assertEqual(jax.tree_util.tree_structure(shardings),
                     jax.tree_util.tree_structure(opt_state))
    for leaf, sharding in zip(jax.tree_util.tree_leaves(opt_state),
                              jax.tree_util.tree_leaves(shardings)):
      sharding.shard_shape(leaf.shape)  # Raises if the ranks disagree.
    del params

  def test_meshes_compute_the_numbers_of_one_device(self):
    params, opt_state = _initial()
    batch = _batch()
    base = _compiled_step(_mesh(1, 1))[0](params, opt_state, batch)
    for data, model in ((8, 1), (4, 2), (2, 4)):
      step = (self.compiled if (data, model) == (2, 4)
              else _compiled_step(_mesh(data, model))[0])
      out = step(params, opt_state, batch)
      # The configurations differ: parameters are spread over the devices.
      wi = out[0]["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
      self.assertLen(wi.sharding.device_set, 8)
      for got, want in zip(jax.tree_util.tree_leaves(out),
                           jax.tree_util.tree_leaves(base)):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6,
                                   err_msg=f"mesh ({data}, {model})")
    # The step really moved the parameters.
    self.assertGreater(float(jnp.abs(
        base[0]["decoder"]["logits_dense"]["kernel"]
        - params["decoder"]["logits_dense"]["kernel"]).max()), 1e-4)


_COLLECTIVES = ("all-to-all", "all-gather", "collective-permute",
                "all-reduce", "reduce-scatter")


def _collectives(hlo_text: str) -> dict[str, int]:
  return {c: n for c in _COLLECTIVES
          if (n := len(re.findall(rf" {c}(?:-start)?\(", hlo_text)))}


class DataParallelRowsTest(absltest.TestCase):
  """On a data-parallel mesh every completion lives on the device of its
  prompt: the network takes the R completions of a prompt as adjacent rows
  (scoring.prompt_major), so a batch split into equal blocks keeps each of
  them with the prompt's encoder output and cross-attention keys and values.
  With the prompts' rows repeated R times instead ([all prompts] * R, the
  framework's order), XLA exchanged the cross-attention's operands between
  devices at every decoding step (four all-to-alls per step here) and
  gathered the encoder output in the update. The sampler runs on each
  device's prompts (rollouts: shard_map), so its loop does not even agree
  on when to stop (an all-reduce per step, before)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    if len(jax.devices()) < 4:
      raise absltest.SkipTest("needs the fake CPU devices of conftest")
    cls.mesh = _mesh(4, 1)

  def _models(self):
    """(policy, ref, prompts) of the tests' tiny model."""
    return (_initial()[0], scoring.init_params(MODEL, jax.random.key(1)),
            _batch()["inputs"])

  def _on_mesh(self, sample, mesh):
    """`sample(policy, ref, inputs, rng)` compiled on `mesh`, the prompts
    split by rows and everything else whole, as the Trainer places them."""
    whole = partitioning.replicated(mesh)
    return partitioning.sharded_jit(
        sample, mesh,
        in_shardings=(whole, whole, partitioning.batch_sharding(mesh), whole))

  @staticmethod
  def _sample(policy, ref, inputs, rng):
    """The tests' mixture sampler call (two completions, beta = 0.25)."""
    cfg = sampling.SamplingConfig(max_decode_length=T)
    return rollouts.sample_mixture(MODEL, policy, MODEL, ref, inputs, rng,
                                   cfg, beta=0.25, repeats=2)

  def _sampler(self, mesh):
    return self._on_mesh(self._sample, mesh)

  def test_decoding_steps_exchange_nothing_between_devices(self):
    policy, ref, inputs = self._models()
    rng = jax.random.key(2)
    sampler = self._sampler(self.mesh)
    compiled = sampler.lower(policy, ref, inputs, rng).compile().as_text()
    # Each device decodes its own rows, and stops when they have ended.
    self.assertEqual(_collectives("\n".join(hlo_text.largest_while_loop(
        compiled, with_condition=True))), {})
    self.assertIn(f"s32[{2 * B // 4},{T}]", compiled)  # Rows really split.
    out = sampler(policy, ref, inputs, rng)
    one = self._sampler(_mesh(1, 1))(policy, ref, inputs, rng)
    np.testing.assert_array_equal(out.tokens, one.tokens)
    for name in ("policy", "ref"):
      np.testing.assert_allclose(out.aux_logps[name], one.aux_logps[name],
                                 rtol=1e-5, atol=1e-5)

  def test_one_mixture_weight_per_row_follows_its_row(self):
    # Nash-MD-PG's call: y from the policy (beta = 0), y' from the mixture,
    # one weight per row, split over the devices with the rows.
    cfg = sampling.SamplingConfig(max_decode_length=T)
    policy, ref, inputs = self._models()
    rng = jax.random.key(3)

    def run(policy, ref, inputs, rng):
      return rollouts.sample_policy_and_mixture(
          MODEL, policy, MODEL, ref, inputs, rng, cfg, beta=0.5)

    out = {mesh.size: self._on_mesh(run, mesh)(policy, ref, inputs, rng)
           for mesh in (self.mesh, _mesh(1, 1))}
    np.testing.assert_array_equal(out[4].tokens, out[1].tokens)
    np.testing.assert_allclose(out[4].aux_logps["ref"],
                               out[1].aux_logps["ref"], rtol=1e-5, atol=1e-5)

  def test_arguments_left_on_the_default_device_are_placed_on_the_mesh(self):
    # Uncommitted arguments (here: fresh arrays, numpy prompts) once made
    # jax.jit compile for the default device alone, and the sampler's
    # shard_map over the mesh inside then failed in XLA:CPU ("No registered
    # implementation for ... xla.sdy.GlobalToLocalShape").
    policy, ref, inputs = self._models()
    rng = jax.random.key(4)
    self.assertIsInstance(inputs, np.ndarray)
    for leaf in jax.tree.leaves((policy, ref)):
      self.assertFalse(leaf.committed)
    placed = self._sampler(self.mesh)(policy, ref, inputs, rng).tokens
    plain = partitioning.sharded_jit(self._sample, self.mesh)
    np.testing.assert_array_equal(
        plain(policy, ref, inputs, rng).tokens, placed)
    self.assertIn(f"s32[{2 * B // 4},{T}]",  # Still split by rows.
                  plain.lower(policy, ref, inputs, rng).compile().as_text())

  def test_update_moves_no_activations_between_devices(self):
    step = _compiled_step(self.mesh)[0]
    params, opt_state = _initial()
    compiled = step.lower(params, opt_state, _batch()).compile().as_text()
    self.assertIn("all-reduce", _collectives(compiled))  # The gradient.
    # Only the completions' tokens and per-token scores change order between
    # the framework's rows and the network's: nothing larger than [2B, T]
    # (the encoder output and its keys here: [B, S, 32], [B, 4, 8, S]).
    moved = re.findall(
        r"= \(?([a-z0-9]+\[[\d,]*\]).*? (?:all-gather|all-to-all)(?:-start)?\(",
        compiled)
    self.assertNotEmpty(moved)
    for shape in moved:
      dims = [int(d) for d in re.findall(r"\d+", shape.split("[")[1])]
      self.assertLessEqual(int(np.prod(dims)), 2 * B * T, shape)


class CompilerOptionsTest(absltest.TestCase):

  def test_sharded_jit_schedules_cpu_programs_for_memory(self):
    # Eight independent dots, each reduced at once: the default XLA:CPU
    # scheduler runs the dots first and holds their [512, 512] results
    # together; the memory-optimised one frees each before the next.
    def f(x, ws):
      total = 0.0
      for i in range(ws.shape[0]):
        total = total + jnp.sum(jnp.tanh(jnp.dot(x, ws[i])))
      return total

    args = (jax.ShapeDtypeStruct((512, 256), jnp.float32),
            jax.ShapeDtypeStruct((8, 256, 512), jnp.float32))
    mesh = _mesh(1, 1)
    self.assertEqual(partitioning.compiler_options(mesh),
                     partitioning.CPU_COMPILER_OPTIONS)
    temp = lambda jitted: jitted.lower(*args).compile().memory_analysis(
    ).temp_size_in_bytes
    one_result = 512 * 512 * 4
    self.assertGreaterEqual(temp(jax.jit(f)), 3 * one_result)
    self.assertLess(temp(partitioning.sharded_jit(f, mesh)), 2 * one_result)


if __name__ == "__main__":
  absltest.main()
