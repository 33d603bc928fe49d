"""The tokenizer inside a GGUF, written so that llama.cpp tokenizes text exactly as training did.

A SentencePiece model becomes llama.cpp's `llama` tokenizer (tokens, scores, types, `add_space_prefix`). A byte-level
BPE (`tokenizer.json`) becomes llama.cpp's `gpt2` tokenizer: tokens, types, merges, and `tokenizer.ggml.pre`, the
name of the rules llama.cpp splits text by before BPE. llama.cpp does not read those rules from the file: it has one
hard-coded set per name, so the name is derived here from the tokenizer's own pre-tokenizer (normalizer, pre-tokenizer
steps, BPE options) and a tokenizer none of the names reproduces is refused: its GGUF would split digits, spaces or
contractions differently from training.

The names below were read from the vocabulary loader of the llama.cpp that llama-cpp-python 0.3.36 vendors
(libllama 0.5.0-dev) and are loaded by that llama.cpp in tests/export/test_llama_cpp.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer.errors import ConversionError

# HF tokenizers' ByteLevel(use_regex=True) splits with GPT-2's regex; llama.cpp's `gpt-2` rules are the same regex.
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# LLaMA 3's Split regex (its tokenizer.json), llama.cpp's `llama-bpe` rules, which also use whole-word vocabulary
# matches before merges (`ignore_merges`).
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_BYTES = ("byte_level",)
_DIGITS = ("digits",)

# llama.cpp pre-tokenizer name → (the pre-tokenization steps, canonical form below; BPE `ignore_merges`)
PRE_TOKENIZERS: dict[str, tuple[tuple[tuple[str, ...], ...], bool]] = {
    "gpt-2": ((("split", GPT2_REGEX), _BYTES), False),  # GPT-2 (KodaLite, auto-g-nano, LiteLlama)
    "starcoder": ((_DIGITS, ("split", GPT2_REGEX), _BYTES), False),  # digits one by one first (StarCoder, SmallCoder)
    "llama-bpe": ((("split", LLAMA3_REGEX), _BYTES), True),  # LLaMA 3
}


def _steps(pre: dict[str, Any] | None) -> tuple[tuple[str, ...], ...]:
    """A tokenizer.json `pre_tokenizer` as a flat tuple of canonical steps; ("unsupported", description) for a step
    llama.cpp has no equivalent of (ByteLevel with a prefix space, a Split that is not isolating, ...)."""
    if pre is None:
        return ()
    kind = pre.get("type")
    if kind == "Sequence":
        return tuple(step for inner in pre.get("pretokenizers", []) for step in _steps(inner))
    if kind == "ByteLevel" and not pre.get("add_prefix_space", False):
        return (("split", GPT2_REGEX), _BYTES) if pre.get("use_regex", True) else (_BYTES,)
    if kind == "Digits" and pre.get("individual_digits", False):
        return (_DIGITS,)
    pattern = pre.get("pattern", {})
    if kind == "Split" and pre.get("behavior") == "Isolated" and not pre.get("invert", False) and "Regex" in pattern:
        return (("split", pattern["Regex"]),)
    options = ", ".join(f"{k}={v}" for k, v in pre.items() if k not in ("type", "pattern"))
    return (("unsupported", f"{kind}({options})"),)


def describe(tokenizer_json: dict[str, Any]) -> str:
    """The pre-tokenization of a tokenizer.json in a few words (what a refusal names)."""
    names = [
        f"Split({step[1][:30]}...)" if step[0] == "split" else step[-1]
        for step in _steps(tokenizer_json.get("pre_tokenizer"))
    ]
    normalizer = tokenizer_json.get("normalizer")
    return (f"normalizer {normalizer.get('type')}, " if normalizer else "") + (
        "pre-tokenizer " + " + ".join(names) if names else "no pre-tokenizer"
    )


def pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name for the rules this byte-level BPE splits text by (`gpt-2`, `starcoder`, `llama-bpe`);
    a ConversionError naming `--format hf` when llama.cpp has no rules that reproduce them."""
    model = tokenizer_json.get("model", {})
    steps = _steps(tokenizer_json.get("pre_tokenizer"))
    exotic_model = (
        model.get("dropout")
        or model.get("continuing_subword_prefix")
        or model.get("end_of_word_suffix")
        or model.get("byte_fallback")
    )
    normalizer = tokenizer_json.get("normalizer")
    if not normalizer or (normalizer.get("type") == "Sequence" and not normalizer.get("normalizers")):
        for name, (expected, ignore_merges) in PRE_TOKENIZERS.items():
            if steps == expected and bool(model.get("ignore_merges", False)) == ignore_merges and not exotic_model:
                return name
    raise ConversionError(
        f"llama.cpp cannot tokenize like this tokenizer ({describe(tokenizer_json)}; it knows "
        f"{', '.join(PRE_TOKENIZERS)}-style byte-level BPE and SentencePiece): export it with "
        "--format hf"
    )


def is_byte_level_bpe(tokenizer_json: dict[str, Any]) -> bool:
    """Whether a tokenizer.json is a byte-level BPE (bytes mapped to printable characters, no byte fallback)."""
    model = tokenizer_json.get("model", {})
    decoder = tokenizer_json.get("decoder") or {}
    decoders = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return (
        model.get("type") == "BPE"
        and not model.get("byte_fallback", False)
        and any(d.get("type") == "ByteLevel" for d in decoders)
    )


def _bpe_tokens(tokenizer_json: dict[str, Any]) -> tuple[list[bytes], list[Any]]:
    """Every id's text and llama.cpp token type: added tokens are CONTROL (special) or USER_DEFINED, which llama.cpp
    splits out of the text before BPE as HF does; ids the file lacks are UNUSED placeholders."""
    from gguf import TokenType

    texts: dict[int, str] = {int(i): t for t, i in tokenizer_json["model"]["vocab"].items()}
    types: dict[int, Any] = {i: TokenType.NORMAL for i in texts}
    for added in tokenizer_json.get("added_tokens", []):
        if added.get("lstrip") or added.get("rstrip") or added.get("single_word"):
            raise ConversionError(
                f"llama.cpp cannot reproduce the added token {added['content']!r}'s lstrip/rstrip/"
                "single_word matching: export with --format hf"
            )
        texts[int(added["id"])] = added["content"]
        types[int(added["id"])] = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
    size = max(texts) + 1
    return (
        [texts.get(i, f"[PAD{i}]").encode() for i in range(size)],
        [types.get(i, TokenType.UNUSED) for i in range(size)],
    )


def _sentencepiece_tokens(path: Path) -> tuple[str, list[bytes], list[float], list[Any]]:
    """llama.cpp's tokenizer model name, tokens, scores and types of a SentencePiece (or LLaMA-style HF) folder."""
    from gguf.vocab import LlamaHfVocab, SentencePieceVocab

    for cls in (SentencePieceVocab, LlamaHfVocab):
        try:
            vocab = cls(path)
        except (FileNotFoundError, TypeError):
            continue
        tokens, scores, types = [], [], []
        for text, score, kind in vocab.all_tokens():
            tokens.append(text)
            scores.append(score)
            types.append(kind)
        return vocab.tokenizer_model, tokens, scores, types
    raise ConversionError(
        "GGUF export supports SentencePiece and byte-level BPE tokenizers only; use --format hf for this tokenizer"
    )


def add_tokenizer(writer: Any, tokenizer_dir: str, tokenizer: Any, vocab_size: int, add_bos: bool) -> str | None:
    """Tokens, scores, types, merges, special ids, BOS/EOS flags and chat template of the HF tokenizer folder
    `tokenizer_dir` (the BOS flag is the data's, which transformers 5 no longer saves in the folder); returns the
    pre-tokenizer name written (None for SentencePiece, which has none)."""
    import gguf
    from gguf.vocab import SpecialVocab

    path = Path(tokenizer_dir)
    tokenizer_json = json.loads((path / "tokenizer.json").read_text()) if (path / "tokenizer.json").exists() else {}
    pre = None
    if not (path / "tokenizer.model").exists() and is_byte_level_bpe(tokenizer_json):
        pre = pre_tokenizer_name(tokenizer_json)
        model_name = "gpt2"
        tokens, types = _bpe_tokens(tokenizer_json)
        scores = [0.0 if t == gguf.TokenType.NORMAL else -1000.0 for t in types]
    else:
        model_name, tokens, scores, types = _sentencepiece_tokens(path)
    if len(tokens) > vocab_size:
        raise ConversionError(f"the tokenizer has {len(tokens)} tokens but model.vocab_size is {vocab_size}")
    for i in range(len(tokens), vocab_size):  # llama.cpp needs one token per embedding row
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model(model_name)
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    else:
        writer.add_add_space_prefix(_adds_dummy_prefix(path))
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = SpecialVocab(path, load_merges=model_name == "gpt2", n_vocab=vocab_size)
    eos = tokenizer.eos_id if tokenizer.end_of_turn_id is None else tokenizer.end_of_turn_id  # chat: end of turn
    ids = {"bos": tokenizer.bos_id, "eos": eos, "pad": tokenizer.pad_id}
    special.special_token_ids.update({k: v for k, v in ids.items() if v is not None})
    special.add_special_token.update({"bos": add_bos, "eos": False})
    special.add_to_gguf(writer, quiet=True)
    return pre


def _adds_dummy_prefix(path: Path) -> bool:
    """Whether the SentencePiece model prepends a space (llama.cpp assumes it does unless told)."""
    model_file = path / "tokenizer.model"
    if not model_file.exists():
        return False
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    return bool(proto.normalizer_spec.add_dummy_prefix)
