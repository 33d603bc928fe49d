"""The model card's text: its facts (`CardFacts`) rendered as Hugging Face card Markdown.

YAML header (license, language, library_name, pipeline_tag, tags, datasets, base_model, model-index), then the
architecture, the training budget (tokens seen and the Chinchilla ratio tokens ÷ 20·N), hardware, throughput and MFU,
evaluation results, the chat template and stop tokens, the export itself (files, parity line) and how to run it in its
runtime. Only facts the run recorded appear: a missing one leaves out its row, never a placeholder.
`trainer.export.card` gathers the facts from a run folder and writes the card.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any

import yaml

from trainer.config import Config
from trainer.eval.report import card_markdown
from trainer.export.model_index import model_index
from trainer.model import rope

LIBRARY = {"hf": "transformers", "gguf": "gguf", "mlx": "mlx", "onnx": "onnx"}
RUNTIME_TAG = {"hf": "safetensors", "gguf": "llama.cpp", "mlx": "mlx-lm", "onnx": "onnxruntime"}
CHINCHILLA_TOKENS_PER_PARAM = 20


@dataclasses.dataclass(frozen=True)
class CardFacts:
    """Everything the card says, gathered from the run folder and the export."""

    name: str
    license: str
    languages: list[str]
    format: str
    variant: str  # "float32", "bfloat16", "q8_0", "8-bit", ...
    files: list[str]
    parity: str | None
    config: Config
    step: int
    params: int
    datasets: list[str]  # short names for the YAML header
    data_sources: list[str]  # the manifests' descriptions of where the text came from
    metrics: list[dict[str, Any]]
    eval_results: dict[str, Any]  # lm-eval's results schema (`results[task]["acc,none"]`), as `trainer.eval` writes
    eval_step: int | None  # the step those results were measured at
    chat_template: str | None
    eos_token: str | None
    eos_id: int | None
    adds_bos: bool
    loss_curve: str | None  # the run's loss.png, copied beside the card
    stop_strings: tuple[str, ...] = ()  # a chat format's end-of-turn marker kept as plain text (KodaLite's <|end|>)
    base_model: str | None = None  # the run a fine-tune or context extension started from (RUN:STEP)
    eval_shots: dict[str, int] = dataclasses.field(default_factory=dict)  # task → few-shot count of its result
    goodput: str | None = None  # the run's goodput ledger in one line (trainer.run.goodput)
    cooldown: str | None = None  # a cooldown branch: the stable step it left, decay tokens, losses (trainer.run.branch)


# ---------------------------------------------------------------------------------------------- rendering


def render(card: CardFacts) -> str:
    """The card's Markdown, YAML header first."""
    header = {
        "license": card.license,
        "language": card.languages,
        "library_name": LIBRARY[card.format],
        "pipeline_tag": "text-generation",
        "tags": ["llama", "causal-lm", "jax", RUNTIME_TAG[card.format]] + (["gguf"] if card.format == "gguf" else []),
        "datasets": card.datasets,
        "base_model": card.base_model,
    }
    header = {k: v for k, v in header.items() if v}
    if card.eval_results:
        header["model-index"] = model_index(card.name, card.eval_results["results"], card.eval_shots)
    parts = [
        "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n",
        f"# {card.name}\n",
        _summary(card),
        _architecture(card),
        _training(card),
        _evaluation(card),
        _chat(card),
        _export(card),
        _usage(card),
    ]
    return "\n".join(p for p in parts if p)


def _summary(card: CardFacts) -> str:
    m = card.config.model
    start = card.config.checkpoint.restore_from
    origin = f"trained on from `{start}`" if start else "trained from scratch"
    return (
        f"A {_count(card.params)}-parameter LLaMA-architecture decoder {origin} with this project's "
        f"JAX trainer ({m.num_layers} layers, width {m.embed_dim}, context {m.max_seq_len}), exported at step "
        f"{card.step:,} as {_FORMAT_NAME[card.format]} ({card.variant}).\n"
    )


_FORMAT_NAME = {
    "hf": "a Hugging Face transformers folder",
    "gguf": "a llama.cpp GGUF file",
    "mlx": "an MLX folder for mlx-lm",
    "onnx": "an ONNX decoder with a KV cache for onnxruntime",
}


def _table(rows: list[tuple[str, Any]], head: tuple[str, str] = ("", "")) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows if v is not None and v != ""]
    return "\n".join(lines) + "\n"


def _architecture(card: CardFacts) -> str:
    m = card.config.model
    rows = [
        ("parameters", f"{card.params:,}"),
        ("layers", m.num_layers),
        ("hidden size", m.embed_dim),
        ("attention heads", m.num_heads),
        ("key/value heads", m.num_kv_heads),
        ("head dim", m.resolved_head_dim),
        ("MLP (SwiGLU)", m.mlp_dim),
        ("vocabulary", f"{m.vocab_size:,}"),
        ("context length", m.max_seq_len),
        ("RoPE θ", f"{m.rope_theta:g}"),
        ("RoPE scaling", _rope_scaling(m)),
        ("RMSNorm ε", f"{m.norm_eps:g}"),
        ("embeddings", "tied" if m.tie_embeddings else "untied"),
    ]
    return "## Architecture\n\n" + _table(rows, ("", "value"))


def _rope_scaling(m: Any) -> str:
    """How the context was extended, e.g. 'yarn × 2 (pretrained at 1,024 tokens)'; empty when it wasn't."""
    r = m.rope_scaling
    if r.type == "none":
        return ""
    if r.type == "ntk":
        return f"ntk × {r.factor:g} (θ' = {rope.effective_theta(m):.6g})"
    return f"{r.type} × {r.factor:g} (pretrained at {rope.original_max_seq_len(m):,} tokens)"


def _training(card: CardFacts) -> str:
    t = card.config.train
    tokens = card.step * t.global_batch_size * t.seq_len
    ratio = tokens / (CHINCHILLA_TOKENS_PER_PARAM * card.params)
    train_rows = [r for r in card.metrics if "loss" in r]
    speed_rows = [r for r in card.metrics if "tokens_per_s" in r]
    eval_rows = [r for r in card.metrics if "eval_loss" in r]
    hardware = next((r["hardware"] for r in reversed(speed_rows) if r.get("hardware")), None)
    mfu = [r["mfu"] for r in speed_rows if isinstance(r.get("mfu"), (int, float))]
    rows: list[tuple[str, Any]] = [
        ("steps", f"{card.step:,}"),
        ("batch", f"{t.global_batch_size} sequences × {t.seq_len} tokens"),
        ("tokens seen", f"{tokens:,} ({_count(tokens)})"),
        ("Chinchilla ratio", f"{ratio:.3g} (tokens ÷ 20·N; 1 = compute-optimal)"),
        ("peak learning rate", f"{card.config.optimizer.learning_rate:g}"),
        ("learning-rate schedule", _schedule(card.config.optimizer)),
        ("training data", "; ".join(card.data_sources) or None),
        ("hardware", hardware),
        (
            "throughput",
            f"{statistics.median(r['tokens_per_s'] for r in speed_rows):,.0f} tokens/s (median)"
            if speed_rows
            else None,
        ),
        ("MFU", f"{100 * statistics.median(mfu):.1f} % (median)" if mfu else None),
        ("final training loss", f"{train_rows[-1]['loss']:.4f}" if train_rows else None),
        (
            "final validation loss",
            f"{eval_rows[-1]['eval_loss']:.4f} (perplexity {math.exp(eval_rows[-1]['eval_loss']):.2f})"
            if eval_rows
            else None,
        ),
        ("cooldown", card.cooldown),
        ("goodput", card.goodput),
    ]
    text = "## Training\n\n" + _table(rows, ("", "value"))
    if card.loss_curve is not None:
        text += "\n![training and validation loss](loss.png)\n"
    return text


def _schedule(o: Any) -> str:
    if o.schedule != "wsd":
        return f"{o.warmup_steps} warmup steps, then {o.schedule}"
    decay = f"{o.decay_steps} steps" if o.decay_steps is not None else f"the last {100 * o.decay_fraction:g} %"
    return f"WSD: {o.warmup_steps} warmup steps, stable, then a {o.decay_shape} decay over {decay}"


def _evaluation(card: CardFacts) -> str:
    if not card.eval_results:
        return ""
    at = "" if card.eval_step == card.step else f" (measured at step {card.eval_step:,})"
    return (
        f"## Evaluation\n\n{'Few-shot as listed' if any(card.eval_shots.values()) else 'Zero-shot'}, scored by "
        f"lm-evaluation-harness's rules (`python -m trainer.eval`){at}:\n\n"
        + card_markdown(card.eval_results, shots=card.eval_shots)
        + "\n"
    )


def _chat(card: CardFacts) -> str:
    lines = ["## Tokens\n"]
    if card.eos_token is not None:
        ended = (
            "the end-of-turn token that ended every reply in fine-tuning"
            if card.chat_template
            else "the end-of-sequence token that ended every training document"
        )
        if card.stop_strings:  # replies ended with plain text: the stop strings (see Usage) end them
            ended = "and at the text " + ", ".join(f"`{s}`" for s in card.stop_strings) + " that ended every reply"
        lines.append(
            f"Generation stops at `{card.eos_token}` (id {card.eos_id}), {ended}. "
            + (
                "Prompts start with BOS, as the training documents did."
                if card.adds_bos
                else "Prompts get no BOS: the training documents had none."
            )
        )
    if card.chat_template:
        lines.append(
            "\nChat template (as the tokenizer applies it with `apply_chat_template`):\n\n```jinja\n"
            + card.chat_template.strip()
            + "\n```"
        )
    return "\n".join(lines) + "\n"


def _export(card: CardFacts) -> str:
    text = (
        f"## This export\n\n{_FORMAT_NAME[card.format][0].upper()}{_FORMAT_NAME[card.format][1:]}, {card.variant}: "
        + ", ".join(f"`{f}`" for f in card.files)
        + ".\n"
    )
    if card.parity:
        text += f"\nChecked against the training code's own forward pass after writing: {card.parity}.\n"
    return text


def _usage(card: CardFacts) -> str:
    name = card.name
    if card.format == "hf":
        code = (
            "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'tokenizer = AutoTokenizer.from_pretrained("{name}")\n'
            f'model = AutoModelForCausalLM.from_pretrained("{name}")\n'
            'inputs = tokenizer("def fibonacci(n):", return_tensors="pt")\n'
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=64, do_sample=False"
            + (", tokenizer=tokenizer" if card.stop_strings else "")
            + ")[0]))\n```"
        )
    elif card.format == "gguf":
        gguf_file = card.files[0]
        code = (
            f'```bash\nllama-cli -m {name}/{gguf_file} -p "def fibonacci(n):" -n 64 --temp 0\n```\n\n'
            "```python\nfrom llama_cpp import Llama\n\n"
            f'llm = Llama(model_path="{name}/{gguf_file}")\n'
            'print(llm("def fibonacci(n):", max_tokens=64, temperature=0)["choices"][0]["text"])\n```'
        )
        stops = ", ".join(f"`{s}`" for s in dict.fromkeys([card.eos_token, *card.stop_strings]) if s)
        code += (
            f"\n\nOllama: `ollama create {name} -f {name}/Modelfile` (the Modelfile beside the GGUF holds the "
            f"chat template, if any, and the stops{': ' + stops if stops else ''})."
        )
        if card.stop_strings:  # GGUF has no key for a plain-text end of turn
            code += (
                " LM Studio: add "
                + ", ".join(f"`{s}`" for s in card.stop_strings)
                + " as stop strings in the model's prompt settings."
            )
    elif card.format == "mlx":
        code = (
            f'```bash\nmlx_lm.generate --model {name} --prompt "def fibonacci(n):" --max-tokens 64\n```\n\n'
            "```python\nfrom mlx_lm import generate, load\n\n"
            f'model, tokenizer = load("{name}")\n'
            'print(generate(model, tokenizer, prompt="def fibonacci(n):", max_tokens=64))\n```'
        )
    else:
        m = card.config.model
        code = (
            "```python\nimport numpy as np\nimport onnxruntime as ort\nfrom transformers import AutoTokenizer\n\n"
            f'tokenizer = AutoTokenizer.from_pretrained("{name}")\n'
            f'session = ort.InferenceSession("{name}/model.onnx")\n'
            'ids = tokenizer("def fibonacci(n):")["input_ids"]\n'
            f'past = {{f"past_key_values.{{i}}.{{kv}}": np.zeros((1, {m.num_kv_heads}, 0, '
            f"{m.resolved_head_dim}), np.float32)\n"
            f'        for i in range({m.num_layers}) for kv in ("key", "value")}}\n'
            "tokens, step_ids = list(ids), list(ids)\n"
            "for _ in range(64):  # greedy, one token per call through the KV cache\n"
            "    start = len(tokens) - len(step_ids)\n"
            '    outputs = session.run(None, {"input_ids": np.array([step_ids]),\n'
            '                                 "attention_mask": np.ones((1, len(tokens)), np.int64),\n'
            '                                 "position_ids": np.arange(start, len(tokens))[None], **past})\n'
            "    past = {f\"past_key_values.{i // 2}.{('key', 'value')[i % 2]}\": a "
            "for i, a in enumerate(outputs[1:])}\n"
            "    step_ids = [int(outputs[0][0, -1].argmax())]\n"
            "    tokens += step_ids\n"
            "print(tokenizer.decode(tokens))\n```"
        )
    return f"## Usage ({RUNTIME_TAG[card.format]})\n\n{code}\n" + _stops(card)


_STOP_HOW = {
    "hf": "`generation_config.json` carries them as `stop_strings`, which `generate` applies when given "
    "`tokenizer=tokenizer`",
    "gguf": "GGUF has no key for them: pass them as `stop=[...]` to llama-cpp-python",
    "mlx": "cut the generated text at them",
    "onnx": "cut the generated text at them",
}


def _stops(card: CardFacts) -> str:
    """The stop strings a chat model needs in every runtime (its end of turn is text, not one token)."""
    if not card.stop_strings:
        return ""
    listed = ", ".join(f"`{s}`" for s in card.stop_strings)
    return (
        f"\nStop strings: {listed}. Replies end with this text, several tokens, not one token id: stop generation "
        f"there ({_STOP_HOW[card.format]}).\n"
    )


def _count(n: int) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)
