"""A readable LLaMA pretraining framework on JAX: one jit code path from a laptop to a TPU pod."""

import os

# Orbax reaches gs:// through etils.epath, which switches to TensorFlow's own GCS client whenever tensorflow is
# installed (the `tfds` extra brings it). Everything else here talks to GCS through fsspec/gcsfs: keep one client,
# with one set of credentials, retries and endpoints, whatever else is installed.
os.environ.setdefault("EPATH_USE_TF", "false")

__version__ = "0.1.0"
