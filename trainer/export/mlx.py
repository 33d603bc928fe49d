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
# |Δlogit| / logit scale of mlx-lm on the quantised weights vs ours on the originals; measured on small random models:
# 0.005-0.008 (8-bit), 0.08-0.12 (4-bit)
QUANTISED_TOLERANCE = {8: 5e-2, 4: 0.25}


def _mlx_lm() -> Any:
    try:
        import mlx.core  # noqa: F401
        import mlx_lm.utils
    except ImportError:
        raise ConversionError('the MLX export needs mlx-lm: pip install "mlx-lm[cpu]" on Linux, mlx-lm on a Mac '
                              '(or the mlx extra: pip install -e ".[mlx]")') from None
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

    stream = generate_step(mx.array(prompt, mx.uint32), model, max_tokens=steps,
                           sampler=lambda lp: mx.argmax(lp, axis=-1))
    return [int(token) for token, _ in stream]


def verify_mlx(folder: str, model: ModelConfig, params: dict[str, Any], dtype: str, bits: int | None) -> str:
    """mlx-lm loads the folder and gives our logits: on the stored weights within 1e-4 × scale (unquantised), or
    within the quantisation's tolerance of ours (quantised); returns the report line."""
    import dataclasses

    mlx_model = load(folder)
    tokens = parity.sample_tokens(model.vocab_size, length=min(64, model.max_seq_len))
    theirs = logits(mlx_model, tokens)
    ours = parity.jax_logits(model, params, tokens)
    if bits is None:
        files = SafetensorsFolder(folder)
        stored = mapping.from_hf(files.__getitem__, dataclasses.replace(model, scan_layers="layers" in params))
        ours_stored = ours if dtype == "float32" else parity.jax_logits(model, stored, tokens)
        return parity.check_logits(parity.compare(ours_stored, theirs), parity.compare(ours, ours_stored), dtype)
    drift = parity.compare(ours, theirs)
    limit = QUANTISED_TOLERANCE[bits]
    if not drift.relative <= limit:
        raise parity.ParityError(f"parity failed: mlx-lm's {bits}-bit model differs from ours by {drift.relative:.3g} "
                                 f"× the logit scale {drift.scale:.3g} (tolerance {limit:g})")
    return (f"parity ok: mlx-lm's {bits}-bit logits differ from ours by {drift.relative:.2g} × logit scale "
            f"{drift.scale:.3g} (tolerance {limit:g}; quantisation, groups of {GROUP_SIZE})")
