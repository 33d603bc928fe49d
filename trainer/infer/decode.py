"""Generation with the model on its mesh: prefill a batch of prompts into the KV cache in one call, then the sampling
loop (`trainer.infer.sample`) one token per step, in chunks, with EOS ids on the device and stop strings on the host.

Prompts of different lengths are left-padded to a common length (rounded up to `PROMPT_BUCKET`, so a few shapes
compile, not one per length) with segment id 0, which the cache never lets a real token see: each row's tokens are
those it gets alone. Positions count from each prompt's first real token.

The params stay where they are (any mesh, any sharding); activations and the cache follow the config's logical rules,
except that the batch is not split over mesh axes it does not divide (a single prompt on an 8-way fsdp mesh).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from trainer import sharding
from trainer.config import Config
from trainer.errors import ConfigError
from trainer.infer import sample
from trainer.infer.stop import CONTEXT_TOKENS, Detokenize, RowText, new_text
from trainer.model.layout import unstack_layers
from trainer.model.transformer import Transformer

PROMPT_BUCKET = 16
CACHE_BUCKET = 128  # cache slots are the padded prompt plus max_new_tokens, rounded up (capped at max_seq_len)
DEFAULT_CHUNK = 16  # new tokens per device call when streaming or checking stop strings


@dataclass
class Completion:
    """One prompt's result. `tokens`/`logprobs` are the new tokens only (an EOS that ended the row included, tokens
    after a stop string's end not); `text` excludes EOS and everything from a stop string on."""

    prompt_tokens: list[int]
    tokens: list[int]
    logprobs: list[float]  # log-probability of each token under the model (before any sampling filter)
    text: str | None  # None without a detokenizer
    finish_reason: str  # "stop": an EOS id or a stop string; "length": max_new_tokens or the context's end


@dataclass
class Timing:
    """Seconds spent in the last `generate` call, and the tokens they produced."""

    prefill_s: float = 0.0
    decode_s: float = 0.0
    prompt_tokens: int = 0
    new_tokens: int = 0
    compile_s: float = 0.0  # ahead-of-time compilation on the first call of a shape (not in the two above)


def decode_config(config: Config, batch: int, mesh: Mesh) -> Config:
    """The config to trace decoding under: no remat, and 'batch' only on the mesh axes (in rule order) it divides."""
    kept, size = [], 1
    for axis in config.mesh.rules.get("batch") or ():
        if batch % (size * mesh.shape[axis]) == 0:
            kept.append(axis)
            size *= mesh.shape[axis]
    rules = dict(config.mesh.rules, batch=kept or None)
    model = dataclasses.replace(config.model, remat_policy="none")
    return dataclasses.replace(config, model=model, mesh=dataclasses.replace(config.mesh, rules=rules))


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, ...]:
    """tokens, positions, segment ids [batch, length]: each prompt right-aligned, padding with segment 0."""
    batch = len(prompts)
    tokens = np.full((batch, length), pad_id, np.int32)
    positions = np.zeros((batch, length), np.int32)
    segments = np.zeros((batch, length), np.int32)
    for row, prompt in enumerate(prompts):
        n = len(prompt)
        tokens[row, length - n :] = prompt
        positions[row, length - n :] = np.arange(n)
        segments[row, length - n :] = 1
    return tokens, positions, segments


class Generator:
    """A model and its params on a mesh, ready to generate; compiled functions are kept per shape and setting."""

    def __init__(self, config: Config, mesh: Mesh, params: Any, unroll: bool | None = None):
        """`unroll`: decode with one layer after another (scanned params are unstacked once, a copy). The default,
        on CPUs only, is measured: XLA:CPU copies each layer's slice of the stacked weights inside the layer scan,
        which doubled the bytes a decode step reads (bench/generate.py, small: 23 → 11 ms of CPU per token)."""
        if unroll is None:
            unroll = mesh.devices.flat[0].platform == "cpu"
        if unroll and "layers" in params:
            params = jax.jit(unstack_layers)(params)
        self.config = config
        self.mesh = mesh
        self.params = params
        self.context_length = config.model.max_seq_len
        self.model_config = dataclasses.replace(config.model, remat_policy="none", scan_layers="layers" in params)
        self.timing = Timing()
        self._compiled: dict[Any, Callable] = {}
        self.replicated = NamedSharding(mesh, PartitionSpec())

    # ------------------------------------------------------------------------------------------- device side

    def _model(self, cache_length: int) -> Transformer:
        return Transformer(self.model_config, decode=True, cache_length=cache_length)

    def tokens_to_logits(self, cache_length: int) -> sample.TokensToLogits:
        """One decode step: tokens [batch] at each row's next position → next-token logits [batch, vocab]."""
        model = self._model(cache_length)

        def step(params: Any, tokens: jax.Array, cache: dict[str, Any]) -> tuple[jax.Array, Any]:
            positions = cache["positions"][:, None]
            logits, variables = model.apply(
                {"params": params, "cache": cache["kv"]},
                tokens[:, None],
                positions,
                jnp.ones_like(positions),
                mutable=["cache"],
            )
            return logits[:, 0], {"kv": variables["cache"], "positions": cache["positions"] + 1}

        return step

    def _prefill_fn(self, cache_length: int, max_new: int, penalty: bool) -> Callable:
        model = self._model(cache_length)

        def prefill(
            params: Any, tokens: jax.Array, positions: jax.Array, segments: jax.Array, rows: jax.Array, seed: jax.Array
        ) -> sample.LoopState:
            logits, variables = model.apply({"params": params}, tokens, positions, segments, mutable=["cache"])
            cache = {"kv": variables["cache"], "positions": positions[:, -1] + 1}
            keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.key(seed), r))(rows)
            return sample.init_state(logits[:, -1], cache, max_new, keys, penalty, tokens, segments > 0)

        return jax.jit(prefill)

    def _call(self, key: Any, make: Callable[[], Callable], *args: Any) -> Any:
        """Call the function compiled for `key` (compiling it ahead of time on first use, timed apart)."""
        if key not in self._compiled:
            start = time.perf_counter()
            self._compiled[key] = make().lower(*args).compile()
            self.timing.compile_s += time.perf_counter() - start
        return self._compiled[key](*args)

    def _put(self, array: Any) -> jax.Array:
        """A host array as a global array replicated over the mesh (every process holds the same prompts)."""
        return jax.make_array_from_process_local_data(self.replicated, np.asarray(array))

    # ------------------------------------------------------------------------------------------- host side

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: sample.Sampling | None = None,
        *,
        seed: int = 0,
        rows: Sequence[int] | None = None,
        eos_ids: Sequence[int] = (),
        pad_id: int = 0,
        stop: Sequence[str] = (),
        detokenize: Detokenize | None = None,
        on_text: Callable[[int, str], None] | None = None,
        chunk: int | None = None,
        prompt_length: int | None = None,
    ) -> list[Completion]:
        """Complete each prompt (token ids) with up to `max_new_tokens` tokens, all rows in one batch.

        `rows`: the rows' numbers for their random streams (default 0..n-1; give a prompt's index in a larger set to
        make its tokens independent of how the set is batched). `stop` strings need `detokenize`; `on_text(row,
        text)` receives text as it becomes final (streaming). Tokens past the context (`model.max_seq_len`) are not
        generated: such rows finish with "length". `self.timing` tells where the time went. `prompt_length`: pad the
        prompts to at least this many tokens (a caller's coarser buckets: fewer shapes compile across calls).
        """
        sampling = sampling or sample.Sampling()
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ConfigError("every prompt needs at least one token")
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}")
        if stop and detokenize is None:
            raise ConfigError("stop strings need a tokenizer to read the text")
        longest = max(len(p) for p in prompts)
        if longest >= self.context_length:
            raise ConfigError(
                f"a prompt of {longest} tokens leaves no room in the model's context of "
                f"{self.context_length} (model.max_seq_len)"
            )
        max_new = min(max_new_tokens, self.context_length - longest)
        length = min(_round_up(max(longest, prompt_length or 0), PROMPT_BUCKET), self.context_length - max_new)
        cache_length = min(_round_up(length + max_new, CACHE_BUCKET), self.context_length)
        batch = len(prompts)
        rows = list(range(batch)) if rows is None else list(rows)
        eos = tuple(int(e) for e in eos_ids)
        penalty = sampling.repetition_penalty != 1.0
        streaming = bool(stop) or on_text is not None
        step_chunk = max(1, chunk or (DEFAULT_CHUNK if streaming else max_new))
        texts = [RowText(detokenize, list(p[-CONTEXT_TOKENS:]), tuple(stop)) for p in prompts] if detokenize else None

        tokens, positions, segments = left_pad(prompts, length, pad_id)
        self.timing = timing = Timing(prompt_tokens=sum(len(p) for p in prompts))
        with sharding.activate(self.mesh, decode_config(self.config, batch, self.mesh)):
            start = time.perf_counter()
            args = (
                *map(self._put, (tokens, positions, segments, np.asarray(rows, np.uint32))),
                self._put(np.uint32(seed)),
            )
            state = self._call(
                ("prefill", batch, length, cache_length, max_new, penalty),
                lambda: self._prefill_fn(cache_length, max_new, penalty),
                self.params,
                *args,
            )
            state.done.block_until_ready()
            timing.prefill_s = time.perf_counter() - start - timing.compile_s
            compiled_before = timing.compile_s
            host_done = np.zeros(batch, bool)
            start = time.perf_counter()
            runner = ("loop", batch, cache_length, max_new, sampling, eos, pad_id)
            # the state keeps its shardings from chunk to chunk (else a batch split over the mesh comes back
            # replicated, or the reverse, and the next chunk's call no longer matches its program)
            state_shardings = jax.tree.map(lambda x: x.sharding, state)
            while True:
                until = self._put(np.int32(min(max_new, int(_host(state.step)) + step_chunk)))
                state = self._call(
                    runner,
                    lambda: sample.make_runner(
                        self.tokens_to_logits(cache_length), sampling, eos, pad_id, out_shardings=state_shardings
                    ),
                    self.params,
                    state,
                    until,
                )
                step = int(_host(state.step))
                out, done, hit_eos = (_host(x) for x in (state.tokens, state.done, state.hit_eos))
                if texts is not None and streaming:
                    for row, row_text in enumerate(texts):
                        if host_done[row]:
                            continue
                        finished = bool(done[row]) or step >= max_new
                        piece = row_text.update(_valid(out[row], step, hit_eos[row], eos), finished)
                        if piece and on_text is not None:
                            on_text(row, piece)
                        host_done[row] = finished or row_text.stop_at is not None
                if step >= max_new or np.all(done | host_done):
                    break
                if np.any(host_done & ~done):
                    state = state.replace(done=self._put(done | host_done))
            logprobs = _host(state.logprobs)
            timing.decode_s = time.perf_counter() - start - (timing.compile_s - compiled_before)
        results = [
            self._completion(
                prompts[row],
                out[row],
                logprobs[row],
                step,
                bool(hit_eos[row]),
                eos,
                texts[row] if texts else None,
                detokenize,
            )
            for row in range(batch)
        ]
        timing.new_tokens = sum(len(r.tokens) for r in results)
        return results

    @staticmethod
    def _completion(
        prompt: Sequence[int],
        tokens: np.ndarray,
        logprobs: np.ndarray,
        step: int,
        hit_eos: bool,
        eos: tuple[int, ...],
        row_text: RowText | None,
        detokenize: Detokenize | None,
    ) -> Completion:
        if row_text is not None and row_text.stop_at is not None:
            count, text, reason = row_text.stop_at[0], row_text.text, "stop"
        else:
            kept = _valid(tokens, step, hit_eos, eos)
            count = len(kept) + (1 if hit_eos else 0)
            text = None if detokenize is None else new_text(detokenize, prompt[-CONTEXT_TOKENS:], kept)
            reason = "stop" if hit_eos else "length"
        return Completion(
            prompt_tokens=list(prompt),
            tokens=[int(t) for t in tokens[:count]],
            logprobs=[float(x) for x in logprobs[:count]],
            text=text,
            finish_reason=reason,
        )


def _host(x: jax.Array) -> np.ndarray:
    """A global array's value on this host, whatever its sharding (across processes too)."""
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _valid(tokens: np.ndarray, step: int, hit_eos: bool, eos: tuple[int, ...]) -> list[int]:
    """A row's generated tokens before its EOS (or all `step` of them)."""
    row = tokens[:step].tolist()
    if hit_eos:
        row = row[: next(i for i, t in enumerate(row) if t in eos)]
    return row


def params_in(dtype: str, params: Any) -> Any:
    """Params cast once to the compute dtype (decoding reads every weight per token: half the bytes in bf16)."""
    target = jnp.dtype(dtype)
    return jax.tree.map(lambda x: x.astype(target) if x.dtype != target else x, params)
