"""Learned preference and reward models: token-level packing, exact
antisymmetry after symmetrisation, the read-outs, the template length check,
and a text-to-text pairwise model imported from Hugging Face giving the same
p as transformers computes."""

import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ipo_md import rollouts
from ipo_md.model import config as config_lib
from ipo_md.model import network
from ipo_md.model import scoring
from ipo_md.preference import learned
from ipo_md.trainer import models as models_lib
from ipo_md.trainer import objectives

CFG = config_lib.T5Config(vocab_size=64, emb_dim=32, num_heads=4, head_dim=8,
                          mlp_dim=64, num_encoder_layers=1,
                          num_decoder_layers=1)
NET = network.Transformer(CFG)
TEMPLATE = learned.Template(prefix=(50,), first=(60,), second=(61,),
                            suffix=(62, 63))


def _rows(rows, width):
  out = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return jnp.asarray(out)


def test_pack_drops_padding_and_eos_and_keeps_template_pieces():
  x = _rows([[5, 6, 1], [7, 1]], 4)            # prompts end with EOS
  y = _rows([[8, 1, 9], [10, 11, 12]], 3)      # 9 follows EOS: dropped
  yp = _rows([[13, 1], [1]], 2)                # an empty response
  packed = learned.pack((TEMPLATE.prefix, x, TEMPLATE.first, y,
                         TEMPLATE.second, yp, TEMPLATE.suffix), 16)
  np.testing.assert_array_equal(packed[0], [50, 5, 6, 60, 8, 61, 13, 62, 63,
                                            1, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(packed[1], [50, 7, 60, 10, 11, 12, 61, 62, 63,
                                            1, 0, 0, 0, 0, 0, 0])


def test_template_longer_than_input_length_is_an_error_naming_the_length():
  x, y = _rows([[5, 1]], 8), _rows([[6, 1]], 4)
  with pytest.raises(ValueError, match=r"needs up to 22 tokens .* "
                     r"input_length is 20\. Raise input_length to at least 22"):
    learned.pack((TEMPLATE.prefix, x, TEMPLATE.first, y, TEMPLATE.second, y,
                  TEMPLATE.suffix), 20, what="preference model input")


def test_heads_validate_their_read_out():
  with pytest.raises(ValueError, match="one token id .* or two"):
    learned.PairwiseHead(input_length=8, readout=(1, 2, 3))
  with pytest.raises(ValueError, match="must be one token id"):
    learned.RewardHead(input_length=8, readout=(1, 2))
  with pytest.raises(ValueError, match="tuple of token ids"):
    learned.Template(first=("a",))


def _batch(rng, b=6, li=7, t=5):
  k1, k2, k3 = jax.random.split(rng, 3)
  x = jax.random.randint(k1, (b, li), 2, 50)
  y = jax.random.randint(k2, (b, t), 1, 50)
  yp = jax.random.randint(k3, (b, t), 1, 50)
  return x, y, yp


def test_symmetrised_pm_is_exactly_antisymmetric_and_the_raw_one_is_not():
  pm = learned.PreferenceModel(
      network=NET, head=learned.PairwiseHead(input_length=24, readout=(62,),
                                             template=TEMPLATE))
  params = scoring.init_params(NET, jax.random.PRNGKey(0))
  x, y, yp = _batch(jax.random.PRNGKey(1))
  judge = jax.jit(lambda a, b, s: rollouts.judge(pm, params, x, a, b,
                                                 symmetrize=s),
                  static_argnums=2)
  fwd, bwd = judge(y, yp, True), judge(yp, y, True)
  np.testing.assert_array_equal(np.asarray(fwd + bwd), np.ones(6))
  # p(y, y) = 0.5 (p + 1 - p): 1/2 up to one float32 rounding of p + 1.
  np.testing.assert_allclose(np.asarray(judge(y, y, True)), 0.5, atol=6e-8)
  raw = np.asarray(judge(y, yp, False) + judge(yp, y, False))
  assert np.max(np.abs(raw - 1.0)) > 1e-3, "the raw PM is not antisymmetric"


def test_readouts_are_sigmoid_of_one_logit_or_of_a_difference():
  params = scoring.init_params(NET, jax.random.PRNGKey(0))
  x, y, yp = _batch(jax.random.PRNGKey(2))
  head = dict(input_length=24, template=TEMPLATE)
  one = learned.PreferenceModel(network=NET,
                                head=learned.PairwiseHead(readout=(7,), **head))
  two = learned.PreferenceModel(
      network=NET, head=learned.PairwiseHead(readout=(7, 9), **head))
  logits = learned.first_step_logits(NET, params, one.pack(x, y, yp))
  np.testing.assert_allclose(one(params, x, y, yp),
                             jax.nn.sigmoid(logits[:, 7]), rtol=1e-6)
  np.testing.assert_allclose(two(params, x, y, yp),
                             jax.nn.sigmoid(logits[:, 7] - logits[:, 9]),
                             rtol=1e-6)


def test_bradley_terry_preference_of_a_reward_model():
  rm = learned.RewardModel(network=NET, head=learned.RewardHead(
      input_length=17, readout=(5,), template=TEMPLATE))
  params = scoring.init_params(NET, jax.random.PRNGKey(3))
  x, y, yp = _batch(jax.random.PRNGKey(4))
  r_y, r_yp = rm(params, x, y), rm(params, x, yp)
  p = rm.preference()(params, x, y, yp)
  np.testing.assert_allclose(p, jax.nn.sigmoid(r_y - r_yp), rtol=1e-5)
  np.testing.assert_allclose(p + rm.preference()(params, x, yp, y), 1.0,
                             rtol=1e-6)


@pytest.mark.parametrize("layout", ["encoder", "decoder"])
def test_each_prompt_once_for_several_rows_equals_repeating_the_prompts(
    layout):
  # The PM stage scores both orders and the symmetrised signal both orders
  # with every prompt passed (and, in the decoder layout, encoded) once.
  lengths = dict(input_length=24, decoder_length=16)
  pm = learned.PreferenceModel(network=NET, head=learned.PairwiseHead(
      readout=(62,), template=TEMPLATE, layout=layout, **lengths))
  rm = learned.RewardModel(network=NET, head=learned.RewardHead(
      readout=(5,), template=TEMPLATE, layout=layout, **lengths))
  params = scoring.init_params(NET, jax.random.PRNGKey(5))
  x, y, yp = _batch(jax.random.PRNGKey(6))
  a, b = jnp.concatenate([y, yp]), jnp.concatenate([yp, y])
  np.testing.assert_allclose(pm.logit(params, x, a, b),
                             pm.logit(params, jnp.concatenate([x, x]), a, b),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(rm(params, x, a),
                             rm(params, jnp.concatenate([x, x]), a),
                             rtol=1e-5, atol=1e-6)
  # The symmetrised signal (prompts shared) against its definition.
  p_fwd, p_bwd = pm(params, x, y, yp), pm(params, x, yp, y)
  np.testing.assert_allclose(rollouts.judge(pm, params, x, y, yp),
                             0.5 * (p_fwd + 1.0 - p_bwd), rtol=1e-6)
  with pytest.raises(ValueError, match="a multiple of the prompts"):
    pm.logit(params, x[:5], a, b)


def _cross_entropy(logit, q):
  logit, q = np.asarray(logit, np.float64), np.asarray(q, np.float64)
  return -q * np.log(1 / (1 + np.exp(-logit))) - (1 - q) * np.log(
      1 / (1 + np.exp(logit)))


@pytest.mark.parametrize("orders", ["both", "random", "given"])
def test_pm_training_loss_is_cross_entropy_on_the_chosen_orders(orders):
  pm = learned.PreferenceModel(network=NET, head=learned.PairwiseHead(
      input_length=16, decoder_length=16, readout=(62,), template=TEMPLATE,
      layout="decoder"))
  objective = objectives.PreferenceModelTraining(
      models=models_lib.Models(policy=NET, preference=pm), orders=orders)
  params = scoring.init_params(NET, jax.random.PRNGKey(7))
  x, a, b = _batch(jax.random.PRNGKey(8), b=16)
  q = jnp.linspace(0.0, 1.0, 16)
  rng = jax.random.PRNGKey(9)
  loss, metrics = jax.jit(objective.loss)(
      params, None, dict(inputs=x, chosen=a, rejected=b, label=q), rng)
  fwd = _cross_entropy(pm.logit(params, x, a, b), q)
  bwd = _cross_entropy(pm.logit(params, x, b, a), 1 - q)
  if orders == "both":
    expected = np.mean(np.concatenate([fwd, bwd]))
  elif orders == "given":
    expected = np.mean(fwd)
  else:  # Each pair in one order, swapped with probability 1/2.
    swap = np.asarray(jax.random.bernoulli(rng, 0.5, (16,)))
    assert 0 < swap.sum() < 16, "both orders occur"
    expected = np.mean(np.where(swap, bwd, fwd))
    # A different step's key draws other orders.
    other, _ = jax.jit(objective.loss)(
        params, None, dict(inputs=x, chosen=a, rejected=b, label=q),
        jax.random.PRNGKey(10))
    assert abs(float(other) - float(loss)) > 1e-6
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert 0.0 <= float(metrics["pm/accuracy"]) <= 1.0


def test_pm_training_orders_are_checked():
  pm = learned.PreferenceModel(network=NET, head=learned.PairwiseHead(
      input_length=16, readout=(62,)))
  with pytest.raises(ValueError, match=r"orders='shuffled'; choose one of "
                     r"\('both', 'random', 'given'\)"):
    objectives.PreferenceModelTraining(
        models=models_lib.Models(policy=NET, preference=pm), orders="shuffled")


@pytest.mark.parametrize("layout", ["decoder", "encoder"])
def test_pm_and_rm_training_apply_the_configs_dropout(layout):
  """With dropout in the config, PM and RM training draw it from the step's
  key (a different key, a different loss), as the read-out with that key
  computes; judging (no key) stays deterministic and equals the same
  parameters without dropout."""
  drop = network.Transformer(CFG.replace(dropout_rate=0.3))
  kw = dict(input_length=24, readout=(62,), template=TEMPLATE, layout=layout)
  if layout == "decoder":
    kw["decoder_length"] = 16
  pm = learned.PreferenceModel(network=drop, head=learned.PairwiseHead(**kw))
  rm = learned.RewardModel(network=drop, head=learned.RewardHead(**kw))
  plain_pm = learned.PreferenceModel(network=NET, head=pm.head)
  params = scoring.init_params(NET, jax.random.PRNGKey(7))
  x, a, b = _batch(jax.random.PRNGKey(8), b=8)
  q = jnp.linspace(0.0, 1.0, 8)
  batch = dict(inputs=x, chosen=a, rejected=b, label=q)
  models = models_lib.Models(policy=drop, preference=pm, reward=rm)
  for objective in (objectives.PreferenceModelTraining(models=models),
                    objectives.RewardModelTraining(models=models)):
    loss = jax.jit(objective.loss)
    k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    l1, l2 = float(loss(params, None, batch, k1)[0]), float(
        loss(params, None, batch, k2)[0])
    assert abs(l1 - l2) > 1e-4, (objective, l1, l2)
    if isinstance(objective, objectives.PreferenceModelTraining):
      logit = pm.logit(params, x, jnp.concatenate([a, b]),
                       jnp.concatenate([b, a]),
                       rngs={"dropout": jax.random.fold_in(k1, 1)})
      expected = np.mean(_cross_entropy(logit, jnp.concatenate([q, 1 - q])))
    else:
      r = rm(params, x, jnp.concatenate([a, b]), rngs={"dropout": k1})
      expected = np.mean(_cross_entropy(r[:8] - r[8:], q))
    np.testing.assert_allclose(l1, expected, rtol=1e-5)
  np.testing.assert_array_equal(pm.logit(params, x, a, b),
                                plain_pm.logit(params, x, a, b))


@pytest.mark.hf
def test_text_to_text_pairwise_model_from_hugging_face_gives_transformers_p():
  """A SteamSHP-style model (answers "A" or "B"): import a random HF T5,
  read p = sigmoid(logit[A] - logit[B]) and compare with transformers on the
  same packed input ids."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from ipo_md.checkpoints import params_io  # pylint: disable=g-import-not-at-top

  hf_cfg = transformers.T5Config(
      vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2,
      num_decoder_layers=2, num_heads=4, dropout_rate=0.0,
      feed_forward_proj="gated-gelu", tie_word_embeddings=False,
      relative_attention_num_buckets=8, relative_attention_max_distance=16,
      decoder_start_token_id=0)
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(hf_cfg).eval()
  with torch.no_grad():
    model.lm_head.weight = torch.nn.Parameter(torch.randn(64, 32) * 0.3)
  a_id, b_id = 40, 41
  with tempfile.TemporaryDirectory() as tmp:
    model.save_pretrained(tmp)
    params, cfg = params_io.load_initial_params(pathlib.Path(tmp))
  pm = learned.PreferenceModel(
      network=network.Transformer(cfg),
      head=learned.PairwiseHead(input_length=24, readout=(a_id, b_id),
                                template=TEMPLATE))
  x, y, yp = _batch(jax.random.PRNGKey(5))
  ours = np.asarray(pm(params, x, y, yp))
  ids = torch.tensor(np.asarray(pm.pack(x, y, yp)), dtype=torch.long)
  with torch.no_grad():
    logits = model(input_ids=ids, attention_mask=(ids != 0).long(),
                   decoder_input_ids=torch.zeros((ids.shape[0], 1),
                                                 dtype=torch.long)).logits
  theirs = torch.sigmoid(logits[:, 0, a_id] - logits[:, 0, b_id]).numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-5)
  assert np.ptp(ours) > 1e-3, "p must vary across the batch"
