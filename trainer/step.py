"""Train state, loss, and the pure jitted steps: `train_step(state, batch) -> (state, metrics)` and `eval_step`.

Batches are dicts of [batch, length] arrays: `inputs`, `targets` (int32), `loss_mask` (float32),
`segment_ids` and `positions` (int32) — the contract of `trainer.data.pipeline`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from trainer import sharding
from trainer.config import Config
from trainer.model import lora
from trainer.model.transformer import Transformer
from trainer.optim import make_optimizer

Batch = dict[str, jax.Array]
BATCH_KEYS = ("inputs", "targets", "loss_mask", "segment_ids", "positions")


@struct.dataclass
class TrainState:
    """Everything a step changes: the step counter, parameters and optimizer state (incl. non-finite counters)."""

    step: jax.Array
    params: Any
    opt_state: Any


@dataclass
class FrozenBase:
    """The base params a LoRA job's steps take beside the adapters, never differentiated: `params` once restored
    (`StepFunctions.set_base`), before that `abstract` (shapes and shardings, enough to lower the steps). Without LoRA
    both stay None and the steps receive None."""

    params: Any = None
    abstract: Any = None


@dataclass(frozen=True)
class StepFunctions:
    """The jitted step functions of one job on one mesh, with the model, optimizer and shardings they close over."""

    config: Config
    mesh: Mesh
    model: Transformer
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    abstract_state: TrainState  # ShapeDtypeStructs, no memory
    state_shardings: TrainState
    batch_sharding: NamedSharding
    init: InMesh  # rng -> TrainState
    train_step: InMesh  # (TrainState, Batch) -> (TrainState, metrics)
    eval_step: InMesh  # (params, Batch) -> {"nll_sum", "tokens"}
    # LoRA (model.lora.rank > 0): the train state's params are the adapters only; the frozen base params live here
    # (set with `set_base`) and are passed to the jitted steps beside them, never differentiated.
    abstract_base: Any = None
    lora_base: FrozenBase | None = None

    def set_base(self, base: Any) -> None:
        """Give a LoRA job its frozen base params (restored into `abstract_base`'s shardings)."""
        if self.lora_base is None:
            raise TypeError("set_base is for LoRA jobs (model.lora.rank > 0): this job trains every parameter")
        self.lora_base.params = base

    def full_params(self, params: Any) -> Any:
        """The params the model applies: `params` itself, or for LoRA the base and the adapters together."""
        return params if self.lora_base is None else lora.combine(self.lora_base.params, params)

    def global_batch(self, local: dict[str, Any]) -> Batch:
        """This process's rows of a batch (numpy) → global arrays laid out for the steps (every process calls it)."""
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, local[k]) for k in BATCH_KEYS}


def make_step_functions(config: Config, mesh: Mesh) -> StepFunctions:
    """Build model, optimizer and the jitted init / train / eval functions with explicit shardings (nothing
    allocated)."""
    model = Transformer(config.model)
    tx, schedule = make_optimizer(config.optimizer, config.train.steps)
    dummy = jnp.zeros((1, config.train.seq_len), jnp.int32)

    adapters_only = lora.enabled(config.model)

    def init_boxed(rng: jax.Array) -> TrainState:
        params = model.init(rng, dummy)["params"]
        if adapters_only:  # only the adapters are trained, stored and given optimizer state
            params = lora.split(params)[1]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    with sharding.activate(mesh, config):
        # The key is made inside the trace: nothing may execute under a mesh of devices that are not here
        # (a TPU topology compiled for on another machine).
        boxed = jax.eval_shape(lambda: init_boxed(jax.random.key(0)))
        state_shardings = sharding.logical_shardings(boxed, mesh, config)
        boxed_base = base_shardings = abstract_base = None
        if adapters_only:
            boxed_base = lora.split(jax.eval_shape(lambda: model.init(jax.random.key(0), dummy))["params"])[0]
            base_shardings = sharding.logical_shardings(boxed_base, mesh, config)
    abstract_state = with_shardings(boxed, state_shardings)
    if adapters_only:
        abstract_base = with_shardings(boxed_base, base_shardings)
    batch_sharding = sharding.batch_sharding(mesh, config)
    replicated = NamedSharding(mesh, PartitionSpec())

    def init(rng: jax.Array) -> TrainState:
        return nn.unbox(init_boxed(rng))

    def train_step(base: Any, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        rng = None
        if adapters_only and config.model.lora.dropout > 0:  # a key per step: a resumed run draws the same masks
            rng = jax.random.fold_in(jax.random.key(config.train.seed), state.step)
        grads, stats = _accumulate_gradients(model, config, state.params, batch, base, rng)
        count = jnp.maximum(stats["tokens"], 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": stats["nll"] / count,
            "z_loss": stats["z"] / count,
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": schedule(state.step),
            "tokens": stats["tokens"],
            "nonfinite_in_a_row": opt_state.notfinite_count,
            "nonfinite_total": opt_state.total_notfinite,
        }
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    def eval_step(base: Any, params: Any, batch: Batch) -> dict[str, jax.Array]:
        full = _full(base, params)
        if config.train.microbatches == 1:
            nll, _, tokens = _loss_sums(model, full, batch)
            return {"nll_sum": nll, "tokens": tokens}

        def body(sums: tuple[jax.Array, jax.Array], mb: Batch) -> tuple[tuple[jax.Array, jax.Array], None]:
            nll, _, tokens = _loss_sums(model, full, mb)
            return (sums[0] + nll, sums[1] + tokens), None

        # The same slices as training, so evaluating a batch never needs more memory than training on it.
        (nll, tokens), _ = jax.lax.scan(body, (jnp.zeros(()), jnp.zeros(())), _split_microbatches(config, batch))
        return {"nll_sum": nll, "tokens": tokens}

    frozen = FrozenBase(abstract=abstract_base)  # the train and eval steps' first argument (None without LoRA)
    with sharding.activate(mesh, config):
        jit_init = jax.jit(init, out_shardings=state_shardings)
        jit_train = jax.jit(
            train_step,
            in_shardings=(base_shardings, state_shardings, batch_sharding),
            out_shardings=(state_shardings, replicated),
            donate_argnums=1,
        )
        jit_eval = jax.jit(
            eval_step, in_shardings=(base_shardings, state_shardings.params, batch_sharding), out_shardings=replicated
        )
    return StepFunctions(
        config=config,
        mesh=mesh,
        model=model,
        tx=tx,
        schedule=schedule,
        abstract_state=abstract_state,
        state_shardings=state_shardings,
        batch_sharding=batch_sharding,
        init=InMesh(jit_init, mesh, config),
        train_step=InMesh(jit_train, mesh, config, frozen),
        eval_step=InMesh(jit_eval, mesh, config, frozen),
        abstract_base=abstract_base,
        lora_base=frozen if adapters_only else None,
    )


def with_shardings(boxed: Any, shardings: Any) -> Any:
    """The boxed abstract values of an init (`jax.eval_shape`) as plain ShapeDtypeStructs carrying `shardings`: what a
    restore reads into, or a compiler plans for, with nothing allocated."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.unbox(boxed), shardings)


def abstract_params(config: Config, mesh: Mesh) -> Any:
    """ShapeDtypeStructs of the model's whole params tree (a LoRA model: base and adapters) with the shardings
    training gives them on `mesh`; nothing allocated."""
    model = Transformer(config.model)
    with sharding.activate(mesh, config):
        # The key is made inside the trace, as for the train state: nothing executes on the mesh's devices.
        boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))["params"]
        shardings = sharding.logical_shardings(boxed, mesh, config)
    return with_shardings(boxed, shardings)  # outside the mesh: unboxing under one would add sharding constraints


@dataclass(frozen=True)
class InMesh:
    """A jitted function that traces with its mesh and logical rules current: call it, or `lower` it (AOT)."""

    fn: Any
    mesh: Mesh
    config: Config
    frozen: FrozenBase | None = None  # train/eval steps: their first argument, the LoRA base params (or None)

    def __call__(self, *args: Any) -> Any:
        with sharding.activate(self.mesh, self.config):
            return self.fn(*args if self.frozen is None else (self.frozen.params, *args))

    def lower(self, *args: Any) -> Any:
        """`jax.jit(...).lower` under the mesh: `.compile()` the result to time or inspect compilation."""
        if self.frozen is not None:  # before the base is restored, its abstract form lowers the same program
            args = (self.frozen.params if self.frozen.params is not None else self.frozen.abstract, *args)
        with sharding.activate(self.mesh, self.config):
            return self.fn.lower(*args)


def _full(base: Any, params: Any) -> Any:
    return params if base is None else lora.combine(base, params)


def _loss_sums(
    model: Transformer, params: Any, batch: Batch, rng: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Summed next-token cross-entropy and z-loss over positions whose loss mask is 1, in fp32, and the token count."""
    rngs = None if rng is None else {"dropout": rng}
    out: jax.Array = model.apply(  # type: ignore[assignment]  # typed as (output, variables) for mutable applies
        {"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"], rngs=rngs
    )
    logits = out.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, batch["targets"][..., None], axis=-1)[..., 0]
    mask = batch["loss_mask"].astype(jnp.float32)
    nll = jnp.sum((log_z - target_logit) * mask)
    z = jnp.sum(jnp.square(log_z) * mask)
    return nll, z, jnp.sum(mask)


def _split_microbatches(config: Config, batch: Batch) -> Batch:
    """The batch as `train.microbatches` stacked slices; slice m takes rows m, m+M, m+2M, … so every slice stays
    spread over all data-parallel devices."""
    micro = config.train.microbatches
    batch_spec = PartitionSpec(None, sharding.batch_axes(config) or None, None)

    def split(x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0] // micro, micro, *x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(x, batch_spec)

    return jax.tree.map(split, batch)


def _accumulate_gradients(
    model: Transformer, config: Config, params: Any, batch: Batch, base: Any = None, rng: jax.Array | None = None
) -> tuple[Any, dict[str, Any]]:
    """Gradients of the summed loss (divide by the token count afterwards), over `train.microbatches` slices.

    With `base` (LoRA), `params` are the adapters and only they are differentiated.
    """
    z_weight = config.train.z_loss

    def summed_loss(p: Any, mb: Batch, key: jax.Array | None = rng) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        nll, z, tokens = _loss_sums(model, _full(base, p), mb, key)
        return nll + z_weight * z, (nll, z, tokens)

    grad_fn = jax.grad(summed_loss, has_aux=True)
    micro = config.train.microbatches
    if micro == 1:
        grads, (nll, z, tokens) = grad_fn(params, batch)
        return grads, {"nll": nll, "z": z, "tokens": tokens}

    microbatches = _split_microbatches(config, batch)

    def body(carry: tuple[Any, dict[str, Any]], xs: tuple[Batch, jax.Array]) -> tuple[tuple[Any, dict[str, Any]], None]:
        acc, sums = carry
        mb, index = xs
        g, (nll, z, tokens) = grad_fn(params, mb, None if rng is None else jax.random.fold_in(rng, index))
        acc = jax.tree.map(jnp.add, acc, g)
        return (acc, {"nll": sums["nll"] + nll, "z": sums["z"] + z, "tokens": sums["tokens"] + tokens}), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    start = {"nll": jnp.zeros(()), "z": jnp.zeros(()), "tokens": jnp.zeros(())}
    (grads, sums), _ = jax.lax.scan(body, (zeros, start), (microbatches, jnp.arange(micro)))
    return grads, sums
