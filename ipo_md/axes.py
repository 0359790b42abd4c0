"""Logical axis names: the one vocabulary shared by layers, sharding and the optimiser.

Layers name parameter and activation dimensions with these constants only;
`ipo_md.partitioning.LOGICAL_RULES` is the single place that maps them to mesh
axes, and `ipo_md.optim` uses the same names to decide Adafactor factoring.
"""

# Activations.
BATCH = "batch"
LENGTH = "length"
KV_LENGTH = "kv_length"  # key/value length of attention (cache, encoder).
# Parameters and activations.
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV = "kv"  # per-head dimension.
VOCAB = "vocab"
JOINED_KV = "joined_kv"  # heads * kv fused, used by the attention projections.
RELPOS_BUCKETS = "relpos_buckets"
MLP_ACTIVATIONS = "mlp_activations"  # the gate/value pair of a gated MLP.
