"""An export folder for Apple's MLX (`mlx_lm.load(DIR)`), optionally quantised by mlx-lm, and its check in mlx-lm.

mlx-lm's LLaMA reads the Hugging Face tensor names and `config.json` as they are, so the unquantised folder is the HF
folder (`trainer.export.hf` writes it): the weights stream into safetensors, `tie_word_embeddings` is explicit (mlx-lm
assumes tied when it is missing) and RoPE is also written as the legacy top-level `rope_theta` / `rope_scaling`, the
only keys mlx-lm reads. `--mlx-bits 8|4` then quantises that folder with mlx-lm's own quantiser (affine, groups of 64,
every Linear and the embedding), exactly what `mlx_lm.convert -q` writes.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import numpy as np

from trainer.config import ModelConfig
from trainer.errors import ConversionError
from trainer.export import mapping, parity
from trainer.export.safetensors import SafetensorsFolder

GROUP_SIZE = 64
# how far quantisation may move our logits (|Δlogit| / logit scale), as for GGUF's Q8_0 / Q4_0; measured on small
# random models: 0.005-0.016 (8 bits), 0.08-0.26 (4 bits, worst where a row is one group of 64)
QUANTISED_TOLERANCE = {8: 5e-2, 4: 0.5}


def _mlx_lm() -> Any:
    try:
        import mlx.core  # noqa: F401
        import mlx_lm.utils
    except ImportError:
        raise ConversionError(
            'the MLX export needs mlx-lm: pip install "mlx-lm[cpu]" on Linux, mlx-lm on a Mac '
            '(or the mlx extra: pip install -e ".[mlx]")'
        ) from None
    return mlx_lm


def check_installed() -> None:
    """Fail in one line, before any work, when mlx-lm is missing."""
    _mlx_lm()


def quantize_folder(folder: str, bits: int, group_size: int = GROUP_SIZE) -> list[str]:
    """Replace the folder's weights by mlx-lm's quantised ones (`bits` per weight) and record it in config.json."""
    _mlx_lm()
    from mlx_lm.utils import (
        load_config,
        load_model,
        quantize_model,
        save_config,
        save_model,
    )

    path = Path(folder)
    model, _ = load_model(path)
    model, config = quantize_model(model, load_config(path), group_size, bits)
    for name in glob.glob(os.path.join(folder, "model*.safetensors*")):
        os.remove(name)
    save_model(path, model, donate_model=True)
    save_config(config, path / "config.json")
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "model*.safetensors*")))


def load(folder: str, float32: bool = True) -> Any:
    """mlx-lm's model from the folder (`mlx_lm.utils.load_model`), computing in float32 unless told otherwise."""
    _mlx_lm()
    import mlx.core as mx
    from mlx_lm.utils import load_model

    model, _ = load_model(Path(folder))
    if float32:
        model.set_dtype(mx.float32)
    return model


def logits(model: Any, tokens: np.ndarray) -> np.ndarray:
    """mlx-lm's logits on `tokens` [batch, length] (fp32 numpy)."""
    import mlx.core as mx

    out = model(mx.array(np.asarray(tokens, np.int32)))
    return np.array(out.astype(mx.float32))


def greedy(model: Any, prompt: list[int], steps: int) -> list[int]:
    """`steps` tokens by mlx-lm's own generation loop (`generate_step`, its KV cache), argmax sampling."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    stream = generate_step(
        mx.array(prompt, mx.uint32), model, max_tokens=steps, sampler=lambda lp: mx.argmax(lp, axis=-1)
    )
    return [int(token) for token, _ in stream]


def dequantized_weights(mlx_model: Any) -> dict[str, np.ndarray]:
    """The weights of a (quantised) mlx-lm model as float32 numpy arrays under their HF names, dequantised by mlx;
    the model's layers are replaced by their dequantised twins."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import dequantize_model

    dequantize_model(mlx_model)
    return {name: np.array(w.astype(mx.float32)) for name, w in tree_flatten(mlx_model.parameters())}


def verify_mlx(folder: str, model: ModelConfig, params: dict[str, Any], dtype: str, bits: int | None) -> str:
    """mlx-lm loads the folder and gives the logits our model gives on the weights as stored (dequantised by mlx when
    quantised): within 1e-4 × scale; and the stored weights move our logits by less than the dtype's or the
    quantisation's tolerance. Returns the report line."""
    import dataclasses

    layout = dataclasses.replace(model, scan_layers="layers" in params)
    mlx_model = load(folder)
    tokens = parity.sample_tokens(model.vocab_size, length=min(64, model.max_seq_len))
    theirs = logits(mlx_model, tokens)
    ours = parity.jax_logits(model, params, tokens)
    if bits is None:
        stored = mapping.from_hf(SafetensorsFolder(folder).__getitem__, layout)
        ours_stored = ours if dtype == "float32" else parity.jax_logits(model, stored, tokens)
        return parity.check_logits(parity.compare(ours_stored, theirs), parity.compare(ours, ours_stored), dtype)
    stored = mapping.from_hf(dequantized_weights(mlx_model).__getitem__, layout)
    ours_stored = parity.jax_logits(model, stored, tokens)
    report = parity.check_logits(parity.compare(ours_stored, theirs))
    drift = parity.compare(ours, ours_stored)
    limit = QUANTISED_TOLERANCE[bits]
    if not drift.relative <= limit:
        raise parity.ParityError(
            f"parity failed: {bits}-bit quantisation moves the logits by {drift.relative:.3g} × "
            f"the logit scale {drift.scale:.3g} (tolerance {limit:g}); quantise to 8 bits"
        )
    return (
        f"{report}; quantising the weights to {bits} bits (groups of {GROUP_SIZE}) changes our own logits by "
        f"{drift.relative:.2g} × scale (tolerance {limit:g})"
    )
