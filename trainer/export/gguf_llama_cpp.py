"""A GGUF run by llama.cpp itself (llama-cpp-python, the `llama` extra): its tokenization, logits and greedy tokens
against training's.

llama.cpp multiplies F16/BF16 weights with 16-bit activations and quantised weights with activations quantised to
8 bits, so its logits differ from our fp32 ones (computed on the weights as stored in the file) by a little more than
the file's own rounding: hence a tolerance per file type on max |Δlogit| / max |logit| (measured figures in
docs/convert.md). Its greedy tokens run through its KV cache one at a time: each must be our argmax on the same
prefix, or within twice that tolerance of it (a near tie).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

import numpy as np

from trainer.config import ModelConfig
from trainer.errors import ParityError
from trainer.export import parity
from trainer.export.tokenizer import SAMPLE_TEXTS

# max |Δlogit| / max |logit| between llama.cpp and our fp32 forward pass on the stored weights, per --gguf-type
TOLERANCE = {"f16": 5e-3, "bf16": 3e-2, "q8_0": 3e-2, "q4_0": 5e-2, "q4_k_m": 5e-2, "q5_k_m": 5e-2, "q6_k": 5e-2}
# Where pre-tokenizers disagree (digits, contractions, runs of spaces, CRLF, unicode) and a stop token's text typed
# inside a message ({stop}); with SAMPLE_TEXTS, what llama.cpp must tokenize as training did.
GGUF_TEXTS = (
    "In 2024 we sold 1234567 units at 3.14159 each.",
    "I'm sure it's what they'd've done, isn't it? We'll see.",
    "runs    of     spaces   here\r\nand CRLF\r\n",
    "indented digits:\n    9: 'deflate64',\n        42\n",
    "emoji 😀👍🏽 and 🇫🇷, ½ ² ٣",
    "please ignore {stop} in my message",
)
GREEDY_STEPS = 16


def available() -> bool:
    """Whether llama-cpp-python (llama.cpp) is importable here."""
    return importlib.util.find_spec("llama_cpp") is not None


def load(path: str, n_ctx: int, vocab_only: bool = False) -> Any:
    """The GGUF in llama.cpp (quiet, all cores, logits for every position); one line when llama.cpp refuses it."""
    import llama_cpp

    try:
        return llama_cpp.Llama(
            model_path=path,
            n_ctx=n_ctx,
            logits_all=True,
            n_threads=os.cpu_count() or 1,
            vocab_only=vocab_only,
            verbose=False,
        )
    except ValueError as e:
        raise ParityError(f"llama.cpp (llama-cpp-python {llama_cpp.__version__}) cannot load {path}: {e}") from None
    finally:
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)


def logits(llm: Any, tokens: list[int]) -> np.ndarray:
    """llama.cpp's logits [len(tokens), vocab] for one sequence, from an empty cache."""
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], np.float32)


def greedy(llm: Any, prompt: list[int], steps: int) -> list[int]:
    """llama.cpp's own greedy decoding (top-1, no repetition penalty) of `steps` tokens after `prompt`."""
    llm.reset()
    out: list[int] = []
    for token in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0):
        out.append(int(token))
        if len(out) == steps:
            break
    return out


def parses_special(tokenizer: Any) -> bool:
    """Whether training turns the text of a special token into its id (HF tokenizers) or spells it out
    (SentencePiece): llama.cpp's `special` flag that tokenizes the same way."""
    return tokenizer.kind != "sentencepiece"


def check_tokenizer(llm: Any, tokenizer: Any, add_bos: bool) -> int:
    """llama.cpp's ids of sample texts equal training's, with a BOS exactly when the data had one; returns how many
    texts were compared."""
    special = parses_special(tokenizer)
    stop = tokenizer.token_text(tokenizer.stop_ids[0])
    texts = list(SAMPLE_TEXTS) + [t.replace("{stop}", stop) for t in GGUF_TEXTS]
    for text in texts:
        ours = tokenizer.encode(text)
        theirs = llm.tokenize(text.encode(), add_bos=False, special=special)
        if theirs != ours:
            raise ParityError(f"llama.cpp tokenizes {text!r} as {theirs[:12]}..., training as {ours[:12]}...")
    bos = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
    if llm.tokenize(texts[0].encode(), add_bos=True, special=special) != bos + tokenizer.encode(texts[0]):
        raise ParityError(f"llama.cpp {'adds no' if bos else 'adds a'} BOS to a prompt, unlike the training data")
    return len(texts)


def check_model(
    path: str,
    model: ModelConfig,
    stored: dict[str, Any],
    ours: np.ndarray,
    tokens: np.ndarray,
    tokenizer: Any,
    add_bos: bool,
    gguf_type: str,
) -> str:
    """Load the GGUF in llama.cpp: tokenization, logits on `tokens` [batch, length] against `ours` (our logits on the
    weights as stored) and greedy tokens against our argmax; returns the report's clause (ParityError on failure)."""
    llm = load(path, n_ctx=min(model.max_seq_len, max(tokens.shape[1], 8 + GREEDY_STEPS)))
    try:
        return _check_loaded(llm, model, stored, ours, tokens, tokenizer, add_bos, gguf_type)
    finally:
        llm.close()


def _check_loaded(
    llm: Any,
    model: ModelConfig,
    stored: dict[str, Any],
    ours: np.ndarray,
    tokens: np.ndarray,
    tokenizer: Any,
    add_bos: bool,
    gguf_type: str,
) -> str:
    count = check_tokenizer(llm, tokenizer, add_bos)
    theirs = np.stack([logits(llm, row.tolist()) for row in tokens])
    comparison = parity.compare(ours, theirs)
    limit = TOLERANCE[gguf_type]
    if not comparison.relative <= limit:
        raise ParityError(
            f"llama.cpp's logits differ from ours by {comparison.relative:.3g} × the logit scale "
            f"{comparison.scale:.3g} (tolerance {limit:g} for {gguf_type})"
        )
    prompt = tokens[0, :8].tolist()
    produced = greedy(llm, prompt, min(GREEDY_STEPS, llm.n_ctx() - len(prompt)))
    ours_greedy = parity.jax_logits(model, stored, np.array([prompt + produced[:-1]]))[0, len(prompt) - 1 :]
    margin = ours_greedy.max(-1) - ours_greedy[np.arange(len(produced)), produced]
    if not np.all(margin <= 2 * limit * comparison.scale):
        step = int(np.argmax(margin > 2 * limit * comparison.scale))
        raise ParityError(
            f"llama.cpp's greedy token {step} ({produced[step]}) is not ours "
            f"({int(ours_greedy[step].argmax())}), by {margin[step]:.3g}"
        )
    agree = float(np.mean(np.argmax(ours, -1) == np.argmax(theirs, -1)))
    return (
        f"llama.cpp: {count} texts tokenized as in training, max |Δlogit| {comparison.relative:.2g} × scale "
        f"(tolerance {limit:g}), argmax agreement {agree:.3f}, {len(produced)} greedy tokens ours"
    )


def not_run() -> str:
    """The report's clause when llama-cpp-python is not installed."""
    return 'llama.cpp not run (pip install -e ".[llama]" to check the file in it)'
