"""A run folder opened for use after training: its config, step, tokenizer, BOS rule, params and a mesh to hold them.

`open_run("RUN[:STEP]")` (local or gs://; a run trained here or a folder made by convert_from_hf) reads the resolved
config and fixes the step (the latest complete one unless named), so every later read sees the same checkpoint. The
opened run gives its tokenizer (RUN/tokenizer), whether prompts start with BOS (the run's record, trainer.data.bos),
the base a fine-tune pinned (RUN/base.json), and its params: on the host for exporters (`host_params`), or restored
straight into the shardings of an abstract tree (`params_into`), which is how a fine-tune's first params and a LoRA
run's frozen base are read too.

A LoRA run's checkpoints hold only its adapters. Its params are its pinned base's (that base's merged weights when it
is itself a LoRA run) with the adapters either beside them (`merged=False`: what training applied) or folded in
(`merged=True`: W + (α/r)·A·B, a plain model whose config has no `model.lora`); both give the same logits up to float
rounding.

`load_run` is what generation and evaluation start from: the run on the devices present (its own mesh when that fits
them, else every device on `fsdp`, noted once on stderr), its params there, its tokenizer and BOS rule.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any, Literal

import jax
import numpy as np
from jax.sharding import Mesh

from trainer import checkpoint, sharding, storage
from trainer.config import Config
from trainer.data.bos import run_adds_bos
from trainer.data.tokenizer import Tokenizer, load_tokenizer
from trainer.errors import CheckpointError, ConfigError
from trainer.model import lora
from trainer.step import abstract_params

BASE_FILE = "base.json"  # a fine-tune's pinned base: {"restore_from": "RUN:STEP", "lora": bool}
TOKENIZER_DIR = "tokenizer"  # training and convert_from_hf copy the run's tokenizer here


def pinned_base(run_dir: str, config: Config) -> str | None:
    """The base `RUN:STEP` a run started from (RUN_DIR/base.json), else checkpoint.restore_from as written; None for
    a run trained from scratch. Pinned, so the base stays the same after the base run trains on."""
    path = storage.join(run_dir, BASE_FILE)
    if storage.exists(path):
        return storage.read_json(path)["restore_from"]
    return config.checkpoint.restore_from or None


def tokenizer_path(run_dir: str, override: str | None = None) -> str:
    """Where a run's tokenizer is: `override` when given, else RUN_DIR/tokenizer; one line when it is missing. Needs
    no checkpoint: a run in training reads it too (its sample, its task scores)."""
    if override and not storage.exists(override):
        raise CheckpointError(
            f"tokenizer not found: {override} (give a SentencePiece .model file or a Hugging Face tokenizer folder)"
        )
    path = override or storage.join(run_dir, TOKENIZER_DIR)
    if not storage.exists(path):
        raise CheckpointError(
            f"no tokenizer in {path}: a run folder keeps its tokenizer in tokenizer/ (training "
            "and convert_from_hf write it there)"
        )
    return path


def prompts_start_with_bos(run_dir: str, config: Config, tokenizer: Tokenizer) -> bool:
    """Whether a prompt to the run's model starts with BOS: its documents did (the run's record, trainer.data.bos)
    and the tokenizer has one."""
    return tokenizer.bos_id is not None and run_adds_bos(run_dir, config)


def without_lora(config: Config) -> Config:
    """The config of a LoRA run's merged weights: the same model without adapters."""
    model = dataclasses.replace(config.model, lora=dataclasses.replace(config.model.lora, rank=0))
    return dataclasses.replace(config, model=model)


def to_shardings(params: Any, abstract: Any) -> Any:
    """Host (numpy) params placed in the shardings and dtypes of the matching abstract tree."""

    def place(value: np.ndarray, target: Any) -> jax.Array:
        value = np.asarray(value, dtype=target.dtype)
        return jax.make_array_from_callback(value.shape, target.sharding, lambda index: value[index])

    return jax.tree.map(place, params, abstract)


@dataclass(frozen=True)
class RunFolder:
    """A run folder at one step (see the module docstring); made by `open_run`, reads nothing more until asked."""

    run_dir: str
    step: int
    config: Config  # the resolved config the run wrote (config.yaml), as written

    @property
    def reference(self) -> str:
        """`RUN_DIR:STEP`, the step fixed."""
        return f"{self.run_dir}:{self.step}"

    @property
    def lora(self) -> bool:
        """Whether the run trained LoRA adapters (its checkpoints hold only those)."""
        return lora.enabled(self.config.model)

    def base(self) -> str | None:
        """The base `RUN:STEP` this run started from (see `pinned_base`), or None."""
        return pinned_base(self.run_dir, self.config)

    def tokenizer_path(self, override: str | None = None) -> str:
        """Where the run's tokenizer is (see `tokenizer_path`)."""
        return tokenizer_path(self.run_dir, override)

    def tokenizer(self, override: str | None = None) -> Tokenizer:
        """The run's tokenizer (RUN/tokenizer, or `override`)."""
        return load_tokenizer(self.tokenizer_path(override))

    def adds_bos(self) -> bool:
        """Whether the run's documents began with BOS, so prompts to its model should (trainer.data.bos)."""
        return run_adds_bos(self.run_dir, self.config)

    def stored_params(self, dtype: str | None = None) -> dict[str, Any]:
        """The checkpoint's own params as numpy (a LoRA run: its adapters only), optionally cast to `dtype`."""
        return checkpoint.load_params(self.reference, dtype=dtype)[1]

    def host_params(self, dtype: str | None = None, merged: bool = True) -> tuple[Config, dict[str, Any]]:
        """The model's config and numpy params (for exporters). A LoRA run: its base's params with the adapters
        folded in (`merged`, and a config without `model.lora`) or beside them (the whole tree training applied)."""
        params = self.stored_params(dtype)
        if not self.lora:
            return self.config, params
        full = lora.combine(self._base_run().host_params(dtype)[1], params)
        if not merged:
            return self.config, full
        return without_lora(self.config), lora.merge(full, self.config.model.lora)

    def params_into(self, abstract: Any, merged: bool = False) -> Any:
        """The params restored straight into the shardings of `abstract`: for a LoRA run with `merged`, a plain
        tree (its merged weights, read on the host then placed); without, the whole tree (base beside adapters)."""
        if not self.lora:
            return checkpoint.restore_params_from(self.reference, abstract)[0]
        if merged:
            return to_shardings(self.host_params()[1], abstract)
        base_abstract, adapter_abstract = lora.split(abstract)
        adapters, _ = checkpoint.restore_params_from(self.reference, adapter_abstract)
        return lora.combine(self._base_run().params_into(base_abstract, merged=True), adapters)

    def _base_run(self) -> RunFolder:
        reference = self.base()
        if not reference:
            raise CheckpointError(
                f"{self.run_dir} is a LoRA run without a base reference (base.json, checkpoint.restore_from)"
            )
        return open_run(reference)


def open_run(reference: str) -> RunFolder:
    """`RUN_DIR[:STEP]` → the run folder at that step (default: its latest complete one); one line when the folder
    is not a run or the step is not among its checkpoints."""
    run_dir, step = checkpoint.parse_reference(reference)
    config = checkpoint.read_run_config(run_dir)
    return RunFolder(run_dir=run_dir, step=checkpoint.resolve_step(run_dir, step), config=config)


def mesh_here(config: Config) -> tuple[Config, Mesh]:
    """The config's mesh on the devices present (one slice) when it fits them; else every device on `fsdp` with the
    run's axis rules, noted on stderr. Returns the config with the mesh it got, and that mesh."""
    single_slice = dataclasses.replace(config.mesh, dcn_data=1, dcn_fsdp=1)
    try:
        sharding.resolve_mesh_shape(single_slice, jax.device_count())
        mesh_config = single_slice
    except ConfigError:
        mesh_config = dataclasses.replace(single_slice, data=1, fsdp=-1, tensor=1)
        print(
            f"note: the run's mesh does not fit the {jax.device_count()} devices here; using fsdp over all of them",
            file=sys.stderr,
            flush=True,
        )
    config = dataclasses.replace(config, mesh=mesh_config)
    return config, sharding.make_mesh(mesh_config)


@dataclass
class LoadedRun:
    """A run ready to compute with: its config on the mesh here, that mesh, its params on it, and its tokenizer."""

    folder: RunFolder
    config: Config  # the run's, with the mesh it got here (and the compute dtype asked for)
    mesh: Mesh
    params: Any
    tokenizer: Tokenizer

    @property
    def step(self) -> int:
        """The checkpoint step the params are from."""
        return self.folder.step

    @property
    def run_dir(self) -> str:
        """The run folder read."""
        return self.folder.run_dir

    def bos(self) -> bool:
        """Whether prompts start with BOS (see `prompts_start_with_bos`)."""
        return prompts_start_with_bos(self.run_dir, self.folder.config, self.tokenizer)


def load_run(
    reference: str,
    compute_dtype: Literal["bfloat16", "float32", "float16"] | None = None,
    merged: bool = False,
    tokenizer: str | None = None,
) -> LoadedRun:
    """`RUN_DIR[:STEP]` on the devices present: config (with `compute_dtype` when given), mesh (`mesh_here`), params
    restored into the shardings training gives them there (a LoRA run: base and adapters, or `merged`), and tokenizer
    (RUN/tokenizer, or `tokenizer`), found before any weight is read."""
    run = open_run(reference)
    tok = run.tokenizer(tokenizer)
    config = without_lora(run.config) if merged and run.lora else run.config
    if compute_dtype is not None:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, compute_dtype=compute_dtype))
    config, mesh = mesh_here(config)
    params = run.params_into(abstract_params(config, mesh), merged=merged)
    return LoadedRun(folder=run, config=config, mesh=mesh, params=params, tokenizer=tok)
