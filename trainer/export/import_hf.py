"""`python -m trainer.convert_from_hf --hf DIR --out RUN_DIR`: a Hugging Face LLaMA folder → a run folder.

Writes a params-only Orbax checkpoint (step 0), the resolved config (the model section from config.json, everything else
from configs/base.yml) and the tokenizer (RUN_DIR/tokenizer/), so that `checkpoint.restore_from=RUN_DIR` starts
training from the model. Then it checks parity: our JAX model on the converted params against transformers on DIR
(`--no-verify` skips it). HF → ours → HF is bitwise in float32. Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from typing import Any

import numpy as np

from trainer import cli_args, storage
from trainer.checkpoint import save_params
from trainer.config import Config, RunConfig, load_config, validate
from trainer.data.bos import BOS_FILE, record_bos
from trainer.data.hf_tokenizer import read_hf_folder
from trainer.errors import ConfigError, ExitCode, cli
from trainer.export import mapping, parity
from trainer.export.safetensors import SafetensorsFolder

BASE_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "base.yml")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = cli_args.ArgumentParser(
        prog="python -m trainer.convert_from_hf",
        description="Import a Hugging Face LLaMA folder as a run folder (params checkpoint).",
    )
    p.add_argument("--hf", required=True, help="folder holding config.json and model*.safetensors")
    p.add_argument("--out", required=True, help="run folder to write (local or gs://)")
    p.add_argument("--no-verify", action="store_true", help="skip the parity check (huge models)")
    p.add_argument("--force", action="store_true", help="replace an existing run folder's checkpoint and config")
    return p.parse_args(argv)


def read_hf_config(folder: str) -> dict[str, Any]:
    """config.json of an HF folder as a dict (refused with one line when missing or not LLaMA)."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{path} is missing: --hf must be a Hugging Face model folder")
    try:
        with open(path) as f:
            config = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is damaged (not valid JSON: {e}): re-download or re-save the model folder") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} is damaged (not a JSON object): re-download or re-save the model folder")
    return config


def resolved_config(hf_config: dict[str, Any], run_dir: str) -> Config:
    """The run's config: model from the HF config, the rest from configs/base.yml (or the built-in defaults)."""
    base = load_config(BASE_CONFIG) if os.path.isfile(BASE_CONFIG) else Config()
    model = mapping.model_config(hf_config, base.model)
    train = dataclasses.replace(base.train, seq_len=min(base.train.seq_len, model.max_seq_len))
    config = dataclasses.replace(base, model=model, train=train, run=RunConfig(dir=run_dir))
    validate(config)
    return config


def read_params(folder: str, config: Config) -> dict[str, Any]:
    """Our params (numpy, the config's layout and param dtype) from the folder's safetensors files."""
    if not any(name.endswith(".safetensors") for name in os.listdir(folder)):
        raise ConfigError(
            f"{folder} has no .safetensors weights (pytorch_model.bin is not read: re-save with "
            "save_pretrained(..., safe_serialization=True))"
        )
    import jax

    files = SafetensorsFolder(folder)
    dtype = jax.numpy.dtype(config.model.param_dtype)
    params = mapping.from_hf(files.__getitem__, config.model)
    return jax.tree.map(lambda x: x if x.dtype == dtype else x.astype(dtype), params)


def copy_tokenizer(folder: str, run_dir: str) -> str | None:
    """The folder's tokenizer into RUN_DIR/tokenizer/, and whether it puts BOS first (its `add_bos_token`, else its
    post-processor) as the run's BOS record (trainer.data.bos); None when the folder has no tokenizer."""
    names = set(os.listdir(folder))
    if not names & {"tokenizer.json", "tokenizer_config.json", "tokenizer.model"}:
        return None
    tokenizer = read_hf_folder(folder)
    saved = tokenizer.save(run_dir)
    record_bos(run_dir, tokenizer.adds_bos, source=f"the imported tokenizer ({folder})")
    return saved


def prepare_run_dir(run_dir: str, force: bool) -> None:
    """Refuse an existing run folder without --force; with it, remove its checkpoints and tokenizer first."""
    if storage.exists(run_dir) and storage.listdir(run_dir):
        if not force:
            raise ConfigError(f"run folder {run_dir} already exists: pass --force to replace its checkpoint and config")
        for name in ("checkpoints", "tokenizer", BOS_FILE):
            path = storage.join(run_dir, name)
            if storage.exists(path):
                if storage.is_remote(path):
                    storage.filesystem(path)[0].rm(path, recursive=True)
                else:
                    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def verify(folder: str, config: Config, params: dict[str, Any]) -> str:
    """Our logits on the converted params vs transformers on the HF folder (fp32); the one-line report."""
    tokens = parity.sample_tokens(config.model.vocab_size, length=min(64, config.model.max_seq_len))
    ours = parity.jax_logits(config.model, params, tokens)
    theirs = parity.hf_logits(parity.load_hf_model(folder), tokens)
    return parity.check_logits(parity.compare(ours, theirs))


def convert(args: argparse.Namespace) -> str:
    """Run the import; returns the report line."""
    folder = os.path.abspath(args.hf)
    if not os.path.isdir(folder):
        raise ConfigError(f"--hf {args.hf} is not a folder")
    config = resolved_config(read_hf_config(folder), args.out)
    prepare_run_dir(args.out, args.force)
    params = read_params(folder, config)
    save_params(args.out, config, params, step=0)
    tokenizer = copy_tokenizer(folder, args.out)
    lines = [
        f"wrote {args.out}: step 0 params ({sum(x.size for x in _leaves(params)):,} parameters), config.yaml"
        + (", tokenizer/" if tokenizer else " (no tokenizer found in --hf)")
    ]
    if not args.no_verify:
        lines.append(verify(folder, config, params))
    return "\n".join(lines)


def _leaves(tree: Any) -> list[np.ndarray]:
    return [x for v in tree.values() for x in (_leaves(v) if isinstance(v, dict) else [v])]


@cli
def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 on success, 1 when parity fails, 2 on input a person must fix."""
    print(convert(parse_args(argv)))
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
