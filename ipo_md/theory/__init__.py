# Copyright 2025 The ipo-md Authors. Licensed under the Apache License 2.0.
"""A tabular lab for the theory of online IPO, IPO-MD and Nash-MD-PG.

With one prompt and K responses a policy is a softmax over K logits, and the
claims of arXiv 2403.08635 §4-5 and App. D-F and of arXiv 2312.00886 that
docs/methods.md lists ("The tabular theory") can be checked exactly:
expected losses are finite sums over the K^2 pairs.
The expected losses go through `ipo_md.losses`, the functions that train the
T5 policies, so the lab checks the code that runs, not a copy of it.

Modules:
  games     preference games, geometric mixtures, named example games.
  nash      exploitability, best responses, the regularised Nash equilibrium
            and the IPO-MD fixed point (numpy/scipy ground truth).
  methods   exact and sampled losses of every method via `ipo_md.losses`.
  dynamics  exact-gradient and sampled (Adafactor) training trajectories.
  report    the experiment behind `ipo-md theory`; figures draws it.

Computations that need float64 run inside `jax.enable_x64(True)`; nothing
here changes JAX's global configuration.
"""
