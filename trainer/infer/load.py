"""A run folder (local or gs://, trained here or imported with convert_from_hf) → its config, a mesh on the devices
present, its params restored straight into their shardings on that mesh, and its tokenizer."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import Mesh

from trainer import checkpoint, sharding, storage
from trainer.config import Config
from trainer.errors import CheckpointError, ConfigError
from trainer.model.transformer import Transformer


@dataclass
class LoadedRun:
    """What generation needs from a run."""

    config: Config
    mesh: Mesh
    params: Any
    tokenizer: Any  # trainer.data.tokenizer.Tokenizer
    step: int
    run_dir: str


def mesh_for(config: Config) -> tuple[Config, Mesh]:
    """The run's mesh when it fits the devices present; else every device on `fsdp` (noted on stderr)."""
    single_slice = dataclasses.replace(config.mesh, dcn_data=1, dcn_fsdp=1)
    try:
        sharding.resolve_mesh_shape(single_slice, jax.device_count())
        mesh_config = single_slice
    except ConfigError:
        mesh_config = dataclasses.replace(single_slice, data=1, fsdp=-1, tensor=1)
        print(f"note: the run's mesh does not fit {jax.device_count()} devices here; using fsdp over all of them",
              file=sys.stderr)
    config = dataclasses.replace(config, mesh=mesh_config)
    return config, sharding.make_mesh(mesh_config)


def abstract_params(config: Config, mesh: Mesh) -> Any:
    """ShapeDtypeStructs of the model's params with their shardings on `mesh` (nothing allocated)."""
    model = Transformer(config.model)
    rng = jax.random.key(0)
    with sharding.activate(mesh, config):
        boxed = jax.eval_shape(lambda: model.init(rng, jnp.zeros((1, 8), jnp.int32)))["params"]
        shardings = sharding.logical_shardings(boxed, mesh, config)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.unbox(boxed), shardings)


def load_run(reference: str, compute_dtype: str | None = None) -> LoadedRun:
    """`RUN_DIR[:STEP]` (latest step by default) → config, mesh, params (cast once to the compute dtype), tokenizer."""
    from trainer.data.tokenizer import load_tokenizer
    from trainer.infer.decode import params_in

    run_dir, _ = checkpoint.parse_reference(reference)
    config = checkpoint.read_run_config(run_dir)
    if compute_dtype is not None:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, compute_dtype=compute_dtype))
    # The folder read, wherever it was trained (the run's facts, e.g. its BOS record, are read from it).
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, dir=run_dir))
    config, mesh = mesh_for(config)
    from trainer.run.finetune import restore_for_inference  # a LoRA run: its base and its adapters

    params, step = restore_for_inference(reference, config, abstract_params(config, mesh))
    folder = storage.join(run_dir, "tokenizer")
    if not storage.exists(folder):
        raise CheckpointError(f"{run_dir} has no tokenizer/ folder: generation needs the run's tokenizer")
    return LoadedRun(config=config, mesh=mesh, params=params_in(config.model.compute_dtype, params),
                     tokenizer=load_tokenizer(folder), step=step, run_dir=run_dir)


def wants_bos(config: Config, tokenizer: Any) -> bool:
    """Whether prompts start with BOS, as the run's documents did: the run's own record (trainer.data.bos), read from
    `config.run.dir` (load_run sets it to the folder it loaded); never guessed from the tokenizer."""
    from trainer.data.bos import run_adds_bos

    return tokenizer.bos_id is not None and run_adds_bos(config.run.dir, config)
