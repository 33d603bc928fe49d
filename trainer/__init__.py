"""A readable LLaMA pretraining framework on JAX: one jit code path from a laptop to a TPU pod."""

__version__ = "0.1.0"
