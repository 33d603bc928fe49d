"""`convert_to_hf --adapter-only`: a LoRA run's adapters as a PEFT adapter folder (adapter_config.json +
adapter_model.safetensors under PEFT's key names) that `peft.PeftModel.from_pretrained` loads onto the base model's
Hugging Face export (`convert_to_hf --checkpoint BASE_RUN`), plus the run's tokenizer (with its chat template)."""

from __future__ import annotations

import json
import os
from typing import Any

import ml_dtypes
import numpy as np

from trainer.errors import ConversionError
from trainer.export.hf import prepare_out_dir
from trainer.export.tokenizer import write_tokenizer
from trainer.model import lora
from trainer.run_folder import open_run


def export_adapter(args: Any, out: str) -> dict[str, Any]:
    """Write the adapter folder for `args.checkpoint`; returns the summary `convert_to_hf` prints."""
    from safetensors.numpy import save_file  # the `hf` extra: only exports need it

    run = open_run(args.checkpoint)
    config = run.config
    if not run.lora:
        raise ConversionError(
            f"{args.checkpoint} is not a LoRA run (model.lora.rank is 0): export it whole, without --adapter-only"
        )
    source = run.tokenizer_path(args.tokenizer)
    adapters, step = run.stored_params(), run.step
    tensors = lora.peft_tensors(adapters, config.model.lora)
    dtype = args.dtype or "float32"
    cast = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]
    prepare_out_dir(out)
    save_file(
        {k: np.ascontiguousarray(v.astype(cast)) for k, v in tensors.items()},
        os.path.join(out, "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )
    base = run.base() or ""
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump(lora.peft_config(config.model.lora, base), f, indent=2)
    write_tokenizer(run.tokenizer(args.tokenizer), source, out, run.adds_bos())
    files = ["adapter_config.json", "adapter_model.safetensors"]
    return {
        "step": step,
        "out": out,
        "files": files,
        "base": base,
        "bytes": os.path.getsize(os.path.join(out, "adapter_model.safetensors")),
    }
