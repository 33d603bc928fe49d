"""The Grain pipeline: the batch contract, epochs of exactly the tokenizer's tokens (1 and 2 hosts), packing that never
crosses a document, mixtures by weight, exact resume across stage boundaries, worker processes, deterministic eval."""

import json
import os
import random

import numpy as np
import pytest

from trainer.config import DataConfig, MixtureComponent, Stage
from trainer.data.pipeline import make_eval_iterator, make_train_iterator
from trainer.data.text_prepare import prepare
from trainer.data.tokenizer import load_tokenizer
from trainer.data.units import is_validation

QUIET = dict(workers=1, progress=False, verbose=False)
WORDS = "the quick brown fox jumps over lazy dog while we import numpy as np and return self".split()


def train_iterator(data, seq_len=32, batch=4, seed=0, index=0, count=1):
    return make_train_iterator(
        data, seq_len=seq_len, global_batch_size=batch, seed=seed, process_index=index, process_count=count
    )


def row_tokens(batch):
    """The seq_len + 1 tokens each row was cut from: inputs plus the last target."""
    return np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)


def documents_of_streams(it, eos, counts):
    """The documents each row position's stream carries (rows concatenate across batches per position), split at
    EOS: the first counts[r] documents (tuples of ids, EOS included) of row position r."""
    docs = [[] for _ in counts]
    current = [[] for _ in counts]
    while any(len(d) < c for d, c in zip(docs, counts)):
        for r, row in enumerate(row_tokens(next(it))):
            for token in row.tolist():
                current[r].append(token)
                if token == eos:
                    docs[r].append(tuple(current[r]))
                    current[r] = []
    return [d[:c] for d, c in zip(docs, counts)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """40 unique documents of 3..~250 tokens, prepared with a 10 % validation split."""
    root = tmp_path_factory.mktemp("pipeline")
    rng = random.Random(1)
    texts = {}
    (root / "in").mkdir()
    for i in range(40):
        path = root / "in" / f"{i:02d}.txt"
        text = f"{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 2, 3, 5, 10, 20, 60, 120])))
        path.write_text(text)
        texts[str(path)] = text
    out = str(root / "out")
    prepare(inputs=[str(root / "in")], out=out, vocab_size=300, val_fraction=0.1, **QUIET)
    tok = load_tokenizer(out)
    encoded = {p: tuple(tok.encode(t) + [tok.eos_id]) for p, t in texts.items()}
    train = {ids for p, ids in encoded.items() if not is_validation(os.path.basename(p), 0, 0.1)}
    val = {ids for p, ids in encoded.items() if is_validation(os.path.basename(p), 0, 0.1)}
    assert len(val) >= 1 and any(len(ids) > 33 for ids in train)
    return root, out, tok, train, val


def test_batch_contract_in_concatenate_mode(prepared):
    _, out, _, _, _ = prepared
    batch = next(train_iterator(DataConfig(path=out), seq_len=32, batch=4))
    assert set(batch) == {"inputs", "targets", "loss_mask", "segment_ids", "positions"}
    for key, dtype in [
        ("inputs", np.int32),
        ("targets", np.int32),
        ("loss_mask", np.float32),
        ("segment_ids", np.int32),
        ("positions", np.int32),
    ]:
        assert batch[key].shape == (4, 32) and batch[key].dtype == dtype
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    assert (batch["segment_ids"] == 1).all() and (batch["loss_mask"] == 1).all()
    np.testing.assert_array_equal(batch["positions"], np.tile(np.arange(32), (4, 1)))


def test_each_epoch_yields_every_train_document_once_on_one_and_two_hosts(prepared):
    """A batch of 4 rows is 4 streams (data.streams = 4): stream s carries documents s, s+4, … of each epoch."""
    _, out, tok, train, _ = prepared
    data = DataConfig(path=out)
    n, shards = len(train), 4
    share = [len(range(s, n, shards)) for s in range(shards)]
    streams = documents_of_streams(train_iterator(data, batch=4), tok.eos_id, [2 * c for c in share])
    epoch1 = [d for s, c in zip(streams, share) for d in s[:c]]
    epoch2 = [d for s, c in zip(streams, share) for d in s[c:]]
    assert sorted(epoch1) == sorted(train) and sorted(epoch2) == sorted(train)  # exactly the tokenizer's tokens
    assert epoch1 != epoch2  # a new permutation each epoch
    host0 = documents_of_streams(train_iterator(data, batch=4, index=0, count=2), tok.eos_id, share[:2])
    host1 = documents_of_streams(train_iterator(data, batch=4, index=1, count=2), tok.eos_id, share[2:])
    assert host0 + host1 == [s[:c] for s, c in zip(streams, share)]  # the hosts' rows are the single host's rows
    flat0, flat1 = [d for s in host0 for d in s], [d for s in host1 for d in s]
    assert not set(flat0) & set(flat1)
    assert sorted(flat0 + flat1) == sorted(train)


def test_two_hosts_feed_the_single_hosts_global_batch(prepared):
    _, out, _, _, _ = prepared
    for packing in (False, True):
        data = DataConfig(path=out, packing=packing)
        single = train_iterator(data, batch=8)
        hosts = [train_iterator(data, batch=8, index=i, count=2) for i in range(2)]
        for _ in range(6):
            whole = next(single)
            parts = [next(h) for h in hosts]
            for key in whole:
                np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_packing_never_crosses_a_document_and_masks_padding(prepared):
    _, out, tok, train, _ = prepared
    seq_len = 32
    it = train_iterator(DataConfig(path=out, packing=True), seq_len=seq_len, batch=4)
    docs = [list(d) for d in train]
    pieces = shared_rows = 0
    for _ in range(30):
        batch = next(it)
        for r in range(4):
            seg, pos, mask = batch["segment_ids"][r], batch["positions"][r], batch["loss_mask"][r]
            inputs, targets = batch["inputs"][r], batch["targets"][r]
            used = seg[seg > 0]
            assert (seg[len(used) :] == 0).all(), "padding only at the end of a row"
            assert (mask[seg == 0] == 0).all() and (inputs[seg == 0] == tok.pad_id).all()
            ids = sorted(set(used.tolist()))
            assert ids == list(range(1, len(ids) + 1))
            shared_rows += len(ids) > 1
            for s in ids:
                where = np.flatnonzero(seg == s)
                a, b = where[0], where[-1] + 1
                assert (where == np.arange(a, b)).all(), "a segment is contiguous"
                np.testing.assert_array_equal(pos[a:b], np.arange(b - a))  # positions restart per document
                assert (mask[a : b - 1] == 1).all()
                tokens = inputs[a:b].tolist() + ([int(targets[b - 1])] if mask[b - 1] else [])
                # Each segment is one piece of one document (pieces start every seq_len tokens), so attention
                # restricted to equal segment ids never sees another document.
                assert any(
                    d[start : start + len(tokens)] == tokens for d in docs for start in range(0, len(d), seq_len)
                ), tokens
                pieces += 1
    assert pieces >= 120 and shared_rows >= 5  # rows really hold several documents


def test_eval_iterator_is_deterministic_fresh_and_from_the_validation_split(prepared):
    _, out, tok, _, val = prepared
    data = DataConfig(path=out)
    kwargs = dict(seq_len=16, global_batch_size=2, process_index=0, process_count=1, num_batches=5)
    first = list(make_eval_iterator(data, **kwargs))
    second = list(make_eval_iterator(data, **kwargs))
    assert len(first) == 5
    for a, b in zip(first, second):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    complete = set()
    for row in range(2):  # each row position is its own stream (data.streams = 2)
        stream = np.concatenate([row_tokens(b)[row] for b in first]).tolist()
        cuts = [i + 1 for i, t in enumerate(stream) if t == tok.eos_id]
        complete |= {tuple(stream[a:b]) for a, b in zip([0] + cuts, cuts)}
    assert complete and complete <= val


@pytest.fixture(scope="module")
def components(prepared, tmp_path_factory):
    """Three folders with one tokenizer and disjoint token sets: digits, lowercase, uppercase documents."""
    root = tmp_path_factory.mktemp("mix")
    rng = random.Random(2)
    alphabets = {"digits": "0123456789", "lower": "abcdefghij", "upper": "ABCDEFGHIJ"}
    for name, letters in alphabets.items():
        (root / "all").mkdir(exist_ok=True)
        (root / name).mkdir()
        for i in range(30):
            text = "".join(rng.choice(letters) for _ in range(rng.randint(5, 200)))
            (root / name / f"{i}.txt").write_text(text)
            (root / "all" / f"{name}{i}.txt").write_text(text)
    prepare(inputs=[str(root / "all")], out=str(root / "tok"), vocab_size=300, val_fraction=0.0, **QUIET)
    model = str(root / "tok" / "tokenizer.model")
    paths = {}
    for name in alphabets:
        paths[name] = str(root / f"{name}-prepared")
        prepare(inputs=[str(root / name)], out=paths[name], tokenizer=model, val_fraction=0.1, **QUIET)
    tok = load_tokenizer(paths["digits"])
    token_sets = {
        name: {t for t in range(tok.vocab_size) if tok.decode([t]) and set(tok.decode([t])) <= set(letters)}
        for name, letters in alphabets.items()
    }
    return paths, token_sets, tok


def test_mixture_weights_are_honoured_within_two_percent_over_10k_sequences(components):
    paths, token_sets, tok = components
    weights = {"digits": 0.40, "lower": 0.25, "upper": 0.35}
    data = DataConfig(mixture=[MixtureComponent(paths[n], w) for n, w in weights.items()])
    it = train_iterator(data, seq_len=16, batch=100)
    counts = dict.fromkeys(weights, 0)
    for _ in range(100):
        for row in row_tokens(next(it)):
            content = set(row.tolist()) - {tok.eos_id}
            (owner,) = [n for n, s in token_sets.items() if content <= s]
            counts[owner] += 1
    for name, weight in weights.items():
        assert abs(counts[name] / 10_000 - weight) < 0.02, counts


@pytest.mark.parametrize("packing", [False, True])
def test_resume_is_exact_with_a_mixture_and_across_a_stage_boundary(components, packing, tmp_path):
    paths, _, _ = components
    stages = [
        Stage(0, [MixtureComponent(paths["digits"], 0.4), MixtureComponent(paths["lower"], 0.6)]),
        Stage(4, [MixtureComponent(paths["lower"], 0.25), MixtureComponent(paths["upper"], 0.75)]),
    ]
    data = DataConfig(stages=stages, packing=packing)
    reference = train_iterator(data, seq_len=16, batch=4, seed=7)
    expected = [next(reference) for _ in range(9)]
    assert reference.stage == 1
    for k in (2, 4, 6):
        it = train_iterator(data, seq_len=16, batch=4, seed=7)
        for _ in range(k):
            next(it)
        state = json.loads(json.dumps(it.get_state()))
        assert len(json.dumps(state)) < 2000 and state["step"] == k
        it.close()
        restored = train_iterator(data, seq_len=16, batch=4, seed=7)
        restored.set_state(state)
        for step in range(k, 9):
            got = next(restored)
            for key in got:
                np.testing.assert_array_equal(got[key], expected[step][key], err_msg=f"{key} at step {step}")
        assert restored.step == 9 and restored.stage == 1
        restored.close()
    # Two hosts' states, merged as checkpoints do, resume one host exactly — and the other way round.
    from trainer.data.pipeline import merge_states

    hosts = [train_iterator(data, seq_len=16, batch=4, seed=7, index=i, count=2) for i in range(2)]
    for _ in range(5):
        for h in hosts:
            next(h)
    merged = json.loads(json.dumps(merge_states([h.get_state() for h in hosts])))
    for h in hosts:
        h.close()
    restored = train_iterator(data, seq_len=16, batch=4, seed=7)
    restored.set_state(merged)
    for step in range(5, 9):
        np.testing.assert_array_equal(next(restored)["inputs"], expected[step]["inputs"])
    single = train_iterator(data, seq_len=16, batch=4, seed=7)
    for _ in range(5):
        next(single)
    state = json.loads(json.dumps(single.get_state()))
    single.close()
    second = train_iterator(data, seq_len=16, batch=4, seed=7, index=1, count=2)
    second.set_state(state)
    np.testing.assert_array_equal(next(second)["inputs"], expected[5]["inputs"][2:])
    restored.close()
    second.close()
    reference.close()


def test_grain_worker_process_gives_the_same_stream_and_resumes(prepared):
    _, out, _, _, _ = prepared
    plain = train_iterator(DataConfig(path=out, packing=True), seq_len=16, batch=2)
    expected = [next(plain) for _ in range(5)]
    data = DataConfig(path=out, packing=True, worker_count=1)
    it = train_iterator(data, seq_len=16, batch=2)
    got = [next(it) for _ in range(3)]
    state = json.loads(json.dumps(it.get_state()))
    it.close()
    restored = train_iterator(data, seq_len=16, batch=2)
    restored.set_state(state)
    got += [next(restored) for _ in range(2)]
    restored.close()
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
        np.testing.assert_array_equal(a["segment_ids"], b["segment_ids"])
