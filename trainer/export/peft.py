"""`convert_to_hf --adapter-only`: a LoRA run's adapters as a PEFT adapter folder (adapter_config.json +
adapter_model.safetensors under PEFT's key names) that `peft.PeftModel.from_pretrained` loads onto the base model's
Hugging Face export (`convert_to_hf --checkpoint BASE_RUN`), plus the run's tokenizer (with its chat template)."""

from __future__ import annotations

import json
import os
from typing import Any

from trainer.errors import ConversionError
from trainer.model import lora


def export_adapter(args: Any, out: str) -> dict[str, Any]:
    """Write the adapter folder for `args.checkpoint`; returns the summary `convert_to_hf` prints."""
    from safetensors.numpy import save_file

    from trainer.checkpoint import load_params, parse_reference
    from trainer.export.hf import prepare_out_dir
    from trainer.data.bos import run_adds_bos
    from trainer.export.tokenizer import find_tokenizer, write_tokenizer
    from trainer.run.finetune import pinned_base

    config, adapters, step = load_params(args.checkpoint)
    if not lora.enabled(config.model):
        raise ConversionError(f"{args.checkpoint} is not a LoRA run (model.lora.rank is 0): export it whole, "
                              "without --adapter-only")
    run_dir, _ = parse_reference(args.checkpoint)
    tensors = lora.peft_tensors(adapters, config.model.lora)
    dtype = args.dtype or "float32"
    import ml_dtypes
    import numpy as np

    cast = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]
    prepare_out_dir(out)
    save_file({k: np.ascontiguousarray(v.astype(cast)) for k, v in tensors.items()},
              os.path.join(out, "adapter_model.safetensors"), metadata={"format": "pt"})
    base = pinned_base(run_dir, config) or ""
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump(lora.peft_config(config.model.lora, base), f, indent=2)
    tokenizer, source = find_tokenizer(run_dir, config, args.tokenizer)
    write_tokenizer(tokenizer, source, out, run_adds_bos(run_dir, config))
    files = ["adapter_config.json", "adapter_model.safetensors"]
    return {"step": step, "out": out, "files": files, "base": base,
            "bytes": os.path.getsize(os.path.join(out, "adapter_model.safetensors"))}
