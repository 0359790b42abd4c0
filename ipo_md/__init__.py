"""ipo_md: preference optimisation for T5 models in JAX (arXiv 2403.08635)."""

__version__ = "0.1.0"
