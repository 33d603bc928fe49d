"""The sampling loop without a model (a bigram table stands in for `tokens_to_logits`): filters match transformers'
logits processors and never let a token outside their set through; temperature → 0 is greedy; EOS ends a row; rows
and chunks don't change each other's tokens; stop strings spanning several tokens end a row's text."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from trainer.errors import ConfigError
from trainer.infer import sample
from trainer.infer.sample import Sampling
from trainer.infer.stop import RowText, unsafe_tail

VOCAB = 64


def bigram_table(seed: int = 0, scale: float = 3.0) -> jax.Array:
    """logits[next | previous]: a fixed random table, the whole 'model'."""
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal((VOCAB, VOCAB)), jnp.float32)


def bigram(table: jax.Array, tokens: jax.Array, cache: jax.Array) -> tuple[jax.Array, jax.Array]:
    """tokens_to_logits: the row's last token picks its row of the table; the cache counts steps."""
    return table[tokens], cache + 1


def generate(
    sampling: Sampling,
    first: np.ndarray,
    max_new: int,
    seed: int = 0,
    rows=None,
    eos=(),
    chunk=None,
    table=None,
    prompt=None,
) -> sample.LoopState:
    """Run the loop from `first` (each row's last prompt token) for `max_new` tokens, in chunks if asked."""
    table = bigram_table() if table is None else table
    batch = len(first)
    rows = np.arange(batch) if rows is None else np.asarray(rows)
    state = sample.init_state(
        table[jnp.asarray(first)],
        jnp.zeros((), jnp.int32),
        max_new,
        sample.row_keys(seed, rows),
        sampling.repetition_penalty != 1.0,
        None if prompt is None else jnp.asarray(prompt),
    )
    run = sample.make_runner(bigram, sampling, eos, pad_id=0)
    step = 0
    while step < max_new and not bool(jnp.all(state.done)):
        step = min(max_new, step + (chunk or max_new))
        state = run(table, state, jnp.int32(step))
    return state


def greedy_chain(first: int, steps: int) -> list[int]:
    table = np.asarray(bigram_table())
    out, token = [], first
    for _ in range(steps):
        token = int(np.argmax(table[token]))
        out.append(token)
    return out


def test_greedy_follows_the_argmax_chain_and_logprobs_are_the_models():
    state = generate(Sampling(), np.array([3, 17]), 12)
    assert np.asarray(state.tokens).tolist() == [greedy_chain(3, 12), greedy_chain(17, 12)]
    table = np.asarray(bigram_table(), np.float64)
    log_softmax = table - np.log(np.exp(table).sum(-1, keepdims=True))
    previous = np.concatenate([[3], np.asarray(state.tokens)[0, :-1]])
    want = log_softmax[previous, np.asarray(state.tokens)[0]]
    np.testing.assert_allclose(np.asarray(state.logprobs)[0], want, rtol=1e-5, atol=1e-5)


def test_temperature_towards_zero_equals_greedy():
    first = np.arange(8)
    greedy = np.asarray(generate(Sampling(), first, 20).tokens)
    cold = np.asarray(generate(Sampling(temperature=1e-4), first, 20, seed=5).tokens)
    hot = np.asarray(generate(Sampling(temperature=1.0), first, 20, seed=5).tokens)
    np.testing.assert_array_equal(cold, greedy)
    assert not np.array_equal(hot, greedy)


HF_CASES = [
    Sampling(temperature=0.7, top_k=5),
    Sampling(temperature=1.3, top_p=0.8),
    Sampling(temperature=1.0, min_p=0.1),
    Sampling(temperature=0.5, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.3),
]


@pytest.mark.parametrize("sampling", HF_CASES, ids=lambda s: f"T{s.temperature}-k{s.top_k}-p{s.top_p}-m{s.min_p}")
def test_processing_matches_transformers_logits_processors(sampling):
    from transformers.generation import logits_process as lp

    rng = np.random.default_rng(1)
    logits = (3 * rng.standard_normal((6, VOCAB))).astype(np.float32)
    history = rng.integers(0, VOCAB, (6, 10))
    seen = np.zeros((6, VOCAB), bool)
    np.put_along_axis(seen, history, True, axis=1)
    ours = np.asarray(sample.process_logits(jnp.asarray(logits), sampling, jnp.asarray(seen)))

    chain = []
    if sampling.repetition_penalty != 1.0:
        chain.append(lp.RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty))
    chain.append(lp.TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k:
        chain.append(lp.TopKLogitsWarper(sampling.top_k))
    if sampling.top_p < 1:
        chain.append(lp.TopPLogitsWarper(sampling.top_p))
    if sampling.min_p:
        chain.append(lp.MinPLogitsWarper(sampling.min_p))
    theirs = torch.tensor(logits)
    for processor in chain:
        theirs = processor(torch.tensor(history), theirs)
    theirs = theirs.numpy()
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs))
    np.testing.assert_allclose(ours[np.isfinite(ours)], theirs[np.isfinite(theirs)], rtol=1e-5)


def allowed(logits: np.ndarray, sampling: Sampling) -> np.ndarray:
    """The tokens each filter keeps, computed directly in numpy (float64) from the definitions."""
    z = logits.astype(np.float64) / sampling.temperature
    keep = np.ones_like(z, bool)
    if sampling.top_k:
        keep &= z >= np.sort(z, -1)[:, -sampling.top_k][:, None]
    if sampling.top_p < 1:
        p = np.exp(z - z.max(-1, keepdims=True)) * keep
        p /= p.sum(-1, keepdims=True)
        order = np.argsort(-p, -1)
        before = np.cumsum(np.take_along_axis(p, order, -1), -1) - np.take_along_axis(p, order, -1)
        kept = np.zeros_like(keep)
        np.put_along_axis(kept, order, before < sampling.top_p, -1)
        keep &= kept
    if sampling.min_p:
        p = np.exp(z - z.max(-1, keepdims=True)) * keep
        p /= p.sum(-1, keepdims=True)
        keep &= p >= sampling.min_p * p.max(-1, keepdims=True)
    return keep


@pytest.mark.parametrize(
    "sampling",
    [Sampling(temperature=1.0, top_k=4), Sampling(temperature=1.0, top_p=0.5), Sampling(temperature=1.0, min_p=0.3)],
    ids=["top_k", "top_p", "min_p"],
)
def test_filters_never_draw_outside_the_allowed_set(sampling):
    table = bigram_table(seed=2, scale=1.0)  # flat-ish rows: many tokens near the cut
    rows = 256
    first = np.arange(rows) % VOCAB
    state = generate(sampling, first, 16, seed=11, table=table)
    tokens = np.asarray(state.tokens)
    previous = np.concatenate([first[:, None], tokens[:, :-1]], axis=1)
    keep = allowed(np.asarray(table), sampling)
    assert keep[previous, tokens].all()
    sizes = keep.sum(-1)
    assert sizes.min() >= 1 and sizes.max() < VOCAB // 2  # the filter did remove most tokens
    # and it is a draw, not the argmax: rows with several allowed tokens take more than one of them
    assert len({(p, t) for p, t in zip(previous.ravel(), tokens.ravel())}) > 2 * VOCAB


def test_rows_and_chunks_do_not_change_each_others_tokens():
    sampling = Sampling(temperature=1.0, top_k=10)
    first = np.array([5, 9, 5, 30])
    together = np.asarray(generate(sampling, first, 24, seed=3).tokens)
    chunked = np.asarray(generate(sampling, first, 24, seed=3, chunk=5).tokens)
    alone = np.asarray(generate(sampling, first[2:3], 24, seed=3, rows=[2]).tokens)
    np.testing.assert_array_equal(chunked, together)
    np.testing.assert_array_equal(alone[0], together[2])
    assert not np.array_equal(together[0], together[2])  # same prompt, another row: another stream


def test_eos_ends_a_row_and_pads_the_rest():
    chain = greedy_chain(3, 30)
    eos = chain[6]
    stop_at = chain.index(eos)
    state = generate(Sampling(), np.array([3, 17]), 30, eos=(eos,))
    tokens = np.asarray(state.tokens)
    assert tokens[0, : stop_at + 1].tolist() == chain[: stop_at + 1]
    assert (tokens[0, stop_at + 1 :] == 0).all() and bool(state.hit_eos[0])
    assert np.asarray(state.logprobs)[0, stop_at + 1 :].sum() == 0


def test_repetition_penalty_avoids_tokens_already_present():
    prompt = np.array([greedy_chain(3, 1)])  # the greedy successor of 3 is in the prompt
    plain = np.asarray(generate(Sampling(), np.array([3]), 1).tokens)[0, 0]
    penalised = np.asarray(generate(Sampling(repetition_penalty=100.0), np.array([3]), 1, prompt=prompt).tokens)
    assert plain == prompt[0, 0] and penalised[0, 0] != plain


def test_bad_settings_are_one_line_config_errors():
    for kwargs in ({"temperature": -1}, {"top_p": 0}, {"min_p": 1.0}, {"top_k": 5}, {"repetition_penalty": 0}):
        with pytest.raises(ConfigError):
            Sampling(**kwargs)


# ---------------------------------------------------------------------------------------------- stop strings

PIECES = ["a", "b", "<", "|", "en", "d", "|", ">", "c", "<|", "end", "|>"]


def detokenize(ids):
    return "".join(PIECES[i] for i in ids)


def test_a_stop_string_spanning_several_tokens_ends_the_text_before_it():
    row = RowText(detokenize, [], ("<|end|>",))
    tokens = [0, 1, 2, 3, 4, 5, 6, 7, 8, 0]  # "ab<|end|>ca"
    shown = row.update(tokens[:4], finished=False)  # "ab<|": "<|" might start the stop string
    assert shown == "ab"
    shown += row.update(tokens, finished=False)
    assert shown == "ab" and row.text == "ab" and row.stop_at == (8, 2)  # 8 tokens through ">"


def test_another_tokenization_of_the_stop_string_is_caught_too():
    row = RowText(detokenize, [], ("<|end|>",))
    assert row.update([8, 9, 10, 11, 0], finished=False) == "c"  # "c" "<|" "end" "|>" "a"
    assert row.stop_at == (4, 1)


def test_text_that_only_looks_like_a_stop_string_start_is_shown_at_the_end():
    assert unsafe_tail("x <|en", ("<|end|>",)) == 4 and unsafe_tail("x <|a", ("<|end|>",)) == 0
    assert unsafe_tail("ok \ufffd", ()) == 1
    row = RowText(detokenize, [], ("<|end|>",))
    assert row.update([0, 2, 3], finished=False) == "a"
    assert row.update([0, 2, 3], finished=True) == "<|"
