"""Chat data: templates render as transformers would, masks cover exactly the replies and their end-of-turn token,
the JSONL shapes (messages, Alpaca, Dolly, OpenAssistant trees) read as documented, and packing keeps masks aligned."""

import json
import os

import numpy as np
import pytest

from trainer.config import DataConfig
from trainer.data import DataError, chat, conversations
from trainer.data import tokenizer as tokenizer_lib
from trainer.data.chat_prepare import prepare_chat

CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "It is 4."},
    {"role": "user", "content": "And 3 + 3, then?"},
    {"role": "assistant", "content": "Six, of course."},
]
JINJA = (
    "{% for m in messages %}{{ '[' + m['role'] + ']: ' + m['content'] }}{% if m['role'] == 'assistant' %}"
    "{{ eos_token }}{% endif %}{{ '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '[assistant]: ' }}{% endif %}"
)
TEMPLATES = ["chatml", "kodalite", "alpaca", JINJA]


@pytest.fixture(scope="module")
def base_tokenizer():
    texts = [
        " ".join(m["content"] for m in CONVERSATION) * 3,
        (
            "Below is an instruction that describes a task.\n"
            "### Instruction:\n### Response:\nsystem user assistant [ ]: 0123456789"
        ),
    ] * 20
    return tokenizer_lib.train_sentencepiece(texts, 320, num_threads=1)


def _with_template(tok, spec):
    missing = chat.missing_tokens(spec, tok)
    return tok.with_tokens(missing) if missing else tok


@pytest.mark.parametrize("name", TEMPLATES, ids=["chatml", "kodalite", "alpaca", "jinja"])
def test_masks_cover_replies_and_end_of_turn_only(base_tokenizer, name):
    spec = chat.resolve_template(name, markers="special")  # every end of turn one id (plain text: test_chat_seeds)
    tok = _with_template(base_tokenizer, spec)
    ids, mask = chat.encode(spec, CONVERSATION, tok)
    assert len(ids) == len(mask) and set(mask) == {0, 1}
    eot = chat.end_of_turn_id(spec, tok)
    eot_text = chat.end_of_turn_text(spec, tok)
    # The masked tokens, read back, are the two replies, each followed by its single end-of-turn token.
    runs, current = [], []
    for token, m in zip(ids, mask):
        if m:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    # (a token may straddle a header and the reply, " It" after "[assistant]:": it counts as the reply's)
    end = ("\n" if name == "kodalite" else "") + eot_text  # KodaLite's card puts <|end|> on a line of its own
    assert [(tok.decode(r[:-1]) + tok.token_text(r[-1])).lstrip() for r in runs] == [
        "It is 4." + end,
        "Six, of course." + end,
    ]
    assert all(r[-1] == eot and r.count(eot) == 1 for r in runs)
    # Everything else — system, user turns, role headers, separators, a user turn's own end marker — is 0.
    unmasked = tok.decode([t for t, m in zip(ids, mask) if not m])
    for m in CONVERSATION:
        if m["role"] != "assistant":
            assert m["content"] in unmasked
    assert "It is 4" not in unmasked and "Six" not in unmasked
    # The whole token sequence is the rendered text tokenized at once (what inference sees).
    text = chat.render(spec, CONVERSATION, eos_token=tok.token_text(tok.eos_id))
    assert ids == tok.encode_with_offsets(text)[0]


def test_kodalite_markers_as_special_ids_end_only_replies(base_tokenizer):
    spec = chat.resolve_template("kodalite", markers="special")
    tok = _with_template(base_tokenizer, spec)
    assert tok.vocab_size == base_tokenizer.vocab_size + 4  # <|system|> <|user|> <|assistant|> <|end|> appended
    assert [tok.encode(t) for t in spec.special_tokens] == [[base_tokenizer.vocab_size + i] for i in range(4)]
    ids, mask = chat.encode(spec, CONVERSATION, tok)
    end = tok.encode("<|end|>")[0]
    ends = [m for t, m in zip(ids, mask) if t == end]
    assert ends == [1, 1]  # the card's format: only replies end with <|end|>


def test_all_zero_mask_and_hidden_turns_are_errors(base_tokenizer):
    spec = chat.resolve_template("chatml")
    tok = _with_template(base_tokenizer, spec)
    with pytest.raises(DataError, match="all zero"):
        chat.encode(spec, [{"role": "user", "content": "hello"}], tok, where="a.jsonl:3")
    hides = chat.resolve_template(
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}{% endfor %}"
    )
    with pytest.raises(DataError, match="end-of-turn"):
        chat.encode(hides, CONVERSATION, tok)
    with pytest.raises(DataError, match="not one"):
        chat.end_of_turn_id(chat.resolve_template("chatml"), base_tokenizer)  # <|im_end|> not added: 9 pieces
    with pytest.raises(DataError, match="neither"):
        chat.resolve_template("vicuna")


def test_jsonl_shapes_and_the_oasst_rule(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"instruction": "Add.", "input": "1 and 2", "output": "3"},
        {"instruction": "Name a colour.", "context": "", "response": "Red.", "category": "open_qa"},
        {
            "message_tree_id": "t",
            "prompt": {
                "role": "prompter",
                "text": "root?",
                "replies": [
                    {"role": "assistant", "text": "second best", "rank": 1, "replies": []},
                    {
                        "role": "assistant",
                        "text": "best",
                        "rank": 0,
                        "replies": [{"role": "prompter", "text": "follow-up", "replies": []}],
                    },
                    {"role": "assistant", "text": "deleted", "rank": -1, "deleted": True},
                ],
            },
        },
        {"message_id": "r", "parent_id": None, "role": "prompter", "text": "flat root"},
        {"message_id": "a1", "parent_id": "r", "role": "assistant", "text": "unranked"},
        {"message_id": "a2", "parent_id": "r", "role": "assistant", "text": "ranked", "rank": 2},
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got = [m for _, m in conversations.read_jsonl([str(path)])]
    assert got[0] == rows[0]["messages"]
    assert got[1] == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert got[2] == [{"role": "user", "content": "Add.\n\n1 and 2"}, {"role": "assistant", "content": "3"}]
    assert got[3] == [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}]
    # best-ranked reply at each turn; the trailing user turn is dropped; deleted replies never chosen
    assert got[4] == [{"role": "user", "content": "root?"}, {"role": "assistant", "content": "best"}]
    assert got[5] == [{"role": "user", "content": "flat root"}, {"role": "assistant", "content": "ranked"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "plain"}\n')
    with pytest.raises(DataError, match="bad.jsonl:1: not a conversation"):
        list(conversations.read_jsonl([str(bad)]))


def test_stdlib_instructions_are_deterministic():
    first = list(conversations.stdlib_instructions(limit=30))
    assert first == list(conversations.stdlib_instructions(limit=30)) and len(first) == 30
    assert all(m[-1]["role"] == "assistant" and m[-1]["content"] for _, m in first)


def test_packing_keeps_masks_aligned(tmp_path, base_tokenizer):
    from trainer.data.pipeline import make_train_iterator
    from trainer.data.shards import read_manifest

    tok_path = tmp_path / "base.model"
    tok_path.write_bytes(base_tokenizer.model_proto)
    convs = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} + {i}?"},
                {"role": "assistant", "content": f"It is {2 * i}."},
            ]
            + ([{"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "Yes."}] if i % 3 else [])
        }
        for i in range(60)
    ]
    src = tmp_path / "convs.jsonl"
    src.write_text("\n".join(json.dumps(c) for c in convs))
    out = str(tmp_path / "chat")
    prepare_chat(
        [str(src)],
        out,
        template="kodalite",
        markers="special",
        tokenizer=str(tok_path),
        val_fraction=0.1,
        verbose=False,
    )
    manifest = read_manifest(out)
    assert manifest.kind == "chat" and manifest.chat["end_of_turn"] == "<|end|>"
    tok = tokenizer_lib.load_tokenizer(out)
    assert tok.end_of_turn_id == manifest.chat["end_of_turn_id"] and tok.end_of_turn_id in tok.stop_ids
    spec = chat.resolve_template("kodalite", markers="special")
    expected = {}
    for c in convs:
        ids, mask = chat.encode(spec, c["messages"], tok)
        expected[tuple(ids)] = mask
    it = make_train_iterator(
        DataConfig(path=out), seq_len=48, global_batch_size=4, seed=1, process_index=0, process_count=1
    )
    checked = 0
    for _ in range(6):
        batch = next(it)
        for r in range(4):
            seg, inputs = batch["segment_ids"][r], batch["inputs"][r]
            for s in set(seg.tolist()) - {0}:
                where = np.flatnonzero(seg == s)
                ids = tuple(inputs[where].tolist())
                # a segment is a whole conversation, or a piece of a long one (split to the row length)
                full, offset = next(
                    ((k, o) for k in expected for o in range(len(k) - len(ids) + 1) if k[o : o + len(ids)] == ids),
                    (None, 0),
                )
                assert full is not None, "a packed segment is not a piece of any conversation"
                # the target of input position p is token p+1; its loss counts iff that token's mask is 1
                want = expected[full][offset + 1 : offset + len(ids)]
                got = batch["loss_mask"][r][where[:-1]].astype(int).tolist()
                assert got == want
                if where[-1] < 47:  # the next segment's first token is never a target of this one
                    assert batch["loss_mask"][r][where[-1]] == 0
                checked += 1
    it.close()
    assert checked > 10


def test_prepare_cli_bad_input_is_one_line(tmp_path, capsys):
    from trainer.data.prepare import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "only a question"}]}\n')
    out = str(tmp_path / "out")
    assert main(["--format", "chat", "--input", str(bad), "--out", out, "--vocab-size", "300"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "assistant mask is all zero" in err[0] and "bad.jsonl:1" in err[0]
    assert not os.path.exists(out)  # refused before anything was written
    assert main(["--format", "chat", "--corpus", "stdlib_qa", "--chat-template", "nope", "--out", out]) == 2
    assert "neither one of chatml, kodalite, alpaca" in capsys.readouterr().err
