"""The sampling loop: a jitted `lax.while_loop` over any `tokens_to_logits` callable, independent of the model.

    tokens_to_logits(context, tokens [batch] int32, cache) -> (logits [batch, vocab], cache)

`context` is what the callable needs besides the cache (the params, passed as a jit argument so they are never
baked in as constants); `cache` is any pytree it carries from step to step (the model's KV cache and positions).

Each step turns the current logits into one token per row, in the order transformers' `generate` applies the same
options, so the flags mean what they mean there:
    1. repetition penalty   every token already in the row (prompt or generated): logit / p if > 0, else logit · p
    2. temperature          logits / T; T = 0 is greedy (argmax after step 1; steps 3-5 are skipped)
    3. top-k                keep the k largest logits (ties with the k-th kept)
    4. top-p                keep the most likely tokens until their probability mass reaches p (at least one)
    5. min-p                keep tokens whose probability is ≥ min_p × the top token's
    6. draw                 from the softmax of what is left, with the row's key for this step
Top-p and min-p see the distribution after temperature and the earlier filters (as in transformers).

Randomness: row r draws step t with `fold_in(fold_in(key(seed), r), t)`, so a row's tokens depend on the seed, its
row number and its own logits only — not on the other rows, the batch size or how the loop is cut into chunks.

The loop stops when every row is done (an EOS id, or flagged done by the caller) or at `until` new tokens, so the
caller can run it in chunks (to stream, or to check stop strings on the host between chunks) and resume it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from trainer.errors import ConfigError

TokensToLogits = Callable[[Any, jax.Array, Any], tuple[jax.Array, Any]]


@dataclass(frozen=True)
class Sampling:
    """How a token is chosen from logits (static: each distinct setting compiles its own loop)."""

    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # 1: off

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"temperature must be ≥ 0 (0 is greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be ≥ 0 (0 is off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise ConfigError(f"min_p must be in [0, 1), got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty must be positive (1 is off), got {self.repetition_penalty}")
        if self.temperature == 0 and (self.top_k or self.top_p < 1 or self.min_p):
            raise ConfigError(
                "top_k / top_p / min_p filter a sampled distribution: give a temperature > 0 (temperature 0 is greedy)"
            )

    @property
    def greedy(self) -> bool:
        """Argmax decoding (no randomness)."""
        return self.temperature == 0


@struct.dataclass
class LoopState:
    """What the loop carries; `init_state` builds it, `run` advances it."""

    step: jax.Array  # [] new tokens so far (the same for every row)
    logits: jax.Array  # [batch, vocab] fp32: the distribution of the next token
    cache: Any  # the callable's own state
    tokens: jax.Array  # [batch, max_new] int32; `pad_id` after a row is done
    logprobs: jax.Array  # [batch, max_new] fp32: log-softmax of the model's logits at the chosen token (0 after done)
    done: jax.Array  # [batch] bool
    hit_eos: jax.Array  # [batch] bool: done because of an EOS id
    seen: jax.Array  # [batch, vocab] bool: tokens in the row so far (only with a repetition penalty, else [batch, 1])
    keys: jax.Array  # [batch] the rows' random keys


def init_state(
    logits: jax.Array,
    cache: Any,
    max_new_tokens: int,
    keys: jax.Array,
    penalty: bool = False,
    prompt_tokens: jax.Array | None = None,
    prompt_mask: jax.Array | None = None,
) -> LoopState:
    """The loop's start: logits of the first new token [batch, vocab], the callable's cache, one key per row
    (`row_keys`).

    With `penalty`, `prompt_tokens` [batch, length] (and `prompt_mask`, False on padding) seed the seen-token sets.
    """
    batch, vocab = logits.shape
    if penalty:
        seen = jnp.zeros((batch, vocab), jnp.bool_)
        if prompt_tokens is not None:
            mask = jnp.ones(prompt_tokens.shape, jnp.bool_) if prompt_mask is None else prompt_mask
            rows = jnp.broadcast_to(jnp.arange(batch)[:, None], prompt_tokens.shape)
            seen = seen.at[rows, prompt_tokens].max(mask)
    else:
        seen = jnp.zeros((batch, 1), jnp.bool_)
    return LoopState(
        step=jnp.zeros((), jnp.int32),
        logits=logits.astype(jnp.float32),
        cache=cache,
        tokens=jnp.zeros((batch, max_new_tokens), jnp.int32),
        logprobs=jnp.zeros((batch, max_new_tokens), jnp.float32),
        done=jnp.zeros((batch,), jnp.bool_),
        hit_eos=jnp.zeros((batch,), jnp.bool_),
        seen=seen,
        keys=keys,
    )


def row_keys(seed: int, rows: Any) -> jax.Array:
    """One key per row from one seed: row number r (e.g. a prompt's line in a file) gets `fold_in(key(seed), r)`,
    the same whatever batch the row lands in."""
    base = jax.random.key(seed)
    return jax.vmap(lambda r: jax.random.fold_in(base, r))(jnp.asarray(rows, jnp.uint32))


def process_logits(logits: jax.Array, sampling: Sampling, seen: jax.Array | None = None) -> jax.Array:
    """Steps 1-5 of the module docstring on fp32 logits [batch, vocab]: the logits to draw from (−inf = excluded)."""
    logits = logits.astype(jnp.float32)
    if sampling.repetition_penalty != 1.0 and seen is not None:
        p = sampling.repetition_penalty
        logits = jnp.where(seen, jnp.where(logits > 0, logits / p, logits * p), logits)
    if sampling.greedy:
        return logits
    logits = logits / sampling.temperature
    if sampling.top_k and sampling.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more likely tokens
        kept = jnp.where((mass_before < sampling.top_p) & (ordered > -jnp.inf), ordered, jnp.inf)
        threshold = jnp.min(kept, axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    if sampling.min_p > 0.0:
        probs = jax.nn.softmax(logits, axis=-1)
        floor = sampling.min_p * jnp.max(probs, axis=-1, keepdims=True)
        logits = jnp.where(probs < floor, -jnp.inf, logits)
    return logits


def choose(
    logits: jax.Array, sampling: Sampling, keys: jax.Array, step: jax.Array, seen: jax.Array | None = None
) -> jax.Array:
    """One token per row [batch] int32 from raw logits: processed, then argmax (greedy) or a draw per row."""
    processed = process_logits(logits, sampling, seen)
    if sampling.greedy:
        return jnp.argmax(processed, axis=-1).astype(jnp.int32)
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)
    return jax.vmap(jax.random.categorical)(step_keys, processed).astype(jnp.int32)


def loop(
    tokens_to_logits: TokensToLogits,
    sampling: Sampling,
    eos_ids: tuple[int, ...],
    pad_id: int,
    context: Any,
    state: LoopState,
    until: jax.Array,
) -> LoopState:
    """Generate until every row is done or `state.step` reaches `until` (≤ max_new_tokens). Pure; jit it (`run`)."""
    max_new = state.tokens.shape[1]
    eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)
    penalty = sampling.repetition_penalty != 1.0

    def cond(s: LoopState) -> jax.Array:
        return (s.step < jnp.minimum(until, max_new)) & ~jnp.all(s.done)

    def body(s: LoopState) -> LoopState:
        token = choose(s.logits, sampling, s.keys, s.step, s.seen if penalty else None)
        logprob = jnp.take_along_axis(jax.nn.log_softmax(s.logits, axis=-1), token[:, None], axis=-1)[:, 0]
        token = jnp.where(s.done, pad_id, token)
        logprob = jnp.where(s.done, 0.0, logprob)
        column = (jnp.zeros((), jnp.int32), s.step)
        tokens = jax.lax.dynamic_update_slice(s.tokens, token[:, None], column)
        logprobs = jax.lax.dynamic_update_slice(s.logprobs, logprob[:, None], column)
        is_eos = jnp.any(token[:, None] == eos[None, :], axis=-1) & ~s.done
        seen = s.seen.at[jnp.arange(token.shape[0]), token].set(True) if penalty else s.seen
        step = s.step + 1

        def forward(cache: Any) -> tuple[jax.Array, Any]:
            logits, cache = tokens_to_logits(context, token, cache)
            return logits.astype(jnp.float32), cache

        # The last token of the whole budget needs no forward pass; a chunk's last one does (the next chunk samples
        # from those logits).
        logits, cache = jax.lax.cond(step < max_new, forward, lambda cache: (s.logits, cache), s.cache)
        return LoopState(
            step=step,
            logits=logits,
            cache=cache,
            tokens=tokens,
            logprobs=logprobs,
            done=s.done | is_eos,
            hit_eos=s.hit_eos | is_eos,
            seen=seen,
            keys=s.keys,
        )

    return jax.lax.while_loop(cond, body, state)


def make_runner(
    tokens_to_logits: TokensToLogits,
    sampling: Sampling,
    eos_ids: tuple[int, ...] = (),
    pad_id: int = 0,
    **jit_kwargs: Any,
) -> Callable[[Any, LoopState, jax.Array], LoopState]:
    """`run(context, state, until) -> state`: the loop jitted for one callable and one sampling setting; the state is
    donated (the cache is updated in place)."""

    def run(context: Any, state: LoopState, until: jax.Array) -> LoopState:
        return loop(tokens_to_logits, sampling, tuple(eos_ids), pad_id, context, state, until)

    return jax.jit(run, donate_argnums=1, **jit_kwargs)
