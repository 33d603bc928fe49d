"""The model card every export writes: README.md beside the exported files, made of the run's own facts.

`facts` gathers them — datasets from the data manifests, throughput and MFU from metrics.jsonl, the loss curve,
evaluation results of `RUN/eval/` up to the exported step, the base a fine-tune started from, the chat format, stop
tokens and BOS — and `write_card` writes the text `trainer.export.card_text` renders from them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from typing import Any

from trainer import storage
from trainer.config import Config
from trainer.data.bos import run_adds_bos
from trainer.export.card_text import CardFacts, render
from trainer.export.tokenizer import chat_template
from trainer.run.branch import cooldown
from trainer.run.goodput import card_line
from trainer.run_folder import pinned_base


def facts(
    args: argparse.Namespace,
    run_dir: str,
    config: Config,
    params: dict[str, Any],
    step: int,
    tokenizer: Any,
    tokenizer_source: str,
    summary: dict[str, Any],
) -> CardFacts:
    """The card's facts for an export the command just wrote (`summary` is the command's own)."""
    import jax

    variant = (
        {
            "gguf": args.gguf_type,
            "mlx": f"{args.mlx_bits}-bit" if args.mlx_bits else None,
            "onnx": args.dtype or "float32",
        }.get(args.format)
        or args.dtype
        or config.model.param_dtype
    )
    sources = _data_folders(config)
    manifests = [_manifest(path) for path in sources]
    loss_curve = storage.join(run_dir, "loss.png")
    return CardFacts(
        name=os.path.basename(os.path.normpath(summary["out"])),
        license=args.license,
        languages=[x.strip() for x in args.language.split(",") if x.strip()],
        format=args.format,
        variant=variant,
        files=list(summary["files"]),
        parity=summary.get("parity"),
        config=config,
        step=step,
        params=sum(math.prod(x.shape) for x in jax.tree.leaves(params)),
        datasets=sorted({name for m in manifests if m for name in dataset_names(m.get("source", ""))}),
        data_sources=[m["source"] for m in manifests if m and m.get("source")],
        metrics=_metrics(run_dir),
        **_eval_results(run_dir, step),
        chat_template=chat_template(tokenizer_source),
        eos_token=_piece(tokenizer, _stop_id(tokenizer)),
        eos_id=_stop_id(tokenizer),
        stop_strings=tuple(getattr(tokenizer, "stop_strings", ())),
        adds_bos=run_adds_bos(run_dir, config) and tokenizer.bos_id is not None,
        loss_curve=loss_curve if storage.exists(loss_curve) else None,
        base_model=_base_model(run_dir, config),
        goodput=card_line(run_dir),
        cooldown=_cooldown(run_dir, config, step),
    )


def _cooldown(run_dir: str, config: Config, step: int) -> str | None:
    """For a cooldown branch: the stable step it left, its decay tokens and the losses beside the stable run's."""
    found = cooldown(run_dir, config, step)
    return found.line() if found is not None else None


def write_card(out: str, card: CardFacts) -> str:
    """Write README.md (and copy the run's loss.png beside it); returns the card's text."""
    text = render(card)
    if card.loss_curve is not None:
        with open(os.path.join(out, "loss.png"), "wb") as f:
            f.write(storage.read_bytes(card.loss_curve))
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(text)
    return text


# ---------------------------------------------------------------------------------------------- gathering


def _data_folders(config: Config) -> list[str]:
    data = config.data
    paths = [data.path] if data.path else []
    paths += [c.path for c in data.mixture]
    paths += [c.path for stage in data.stages for c in stage.mixture]
    return list(dict.fromkeys(p for p in paths if p))


def _manifest(path: str) -> dict[str, Any] | None:
    file = storage.join(path, "manifest.json")
    try:
        return json.loads(storage.read_bytes(file)) if storage.exists(file) else None
    except (OSError, ValueError):
        return None


def dataset_names(source: str) -> list[str]:
    """Short dataset names for the YAML header from a manifest's `source` line (`inputs: hf:org/name, ...`)."""
    if source.startswith("stdlib:"):
        return ["python-stdlib"]
    if not source.startswith("inputs: "):
        return []
    specs = re.sub(r" \(\d+ items\)$", "", source[len("inputs: ") :]).split(", ")
    names = []
    for spec in specs:
        scheme, sep, rest = spec.partition(":")
        if sep and scheme in ("hf", "tfds"):
            names.append(rest.split(":")[0].split("[")[0])
        else:
            names.append(os.path.basename(spec.rstrip("/")) or spec)
    return names


def _metrics(run_dir: str) -> list[dict[str, Any]]:
    path = storage.join(run_dir, "metrics.jsonl")
    if not storage.exists(path):
        return []
    rows = []
    for line in storage.read_bytes(path).decode().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut short by a killed run
            continue
    return rows


def _eval_results(run_dir: str, step: int) -> dict[str, Any]:
    """Every task's result `trainer.eval` wrote into RUN_DIR/eval/step_<N>.json (lm-eval's schema) up to the exported
    step, each task's newest: {"eval_results", "eval_step", "eval_shots"} ({}, None and {} when there are none).
    `eval_step` is the newest step a result comes from; `eval_shots` each task's few-shot count (0 unless recorded)."""
    folder = storage.join(run_dir, "eval")
    steps = sorted(
        int(m.group(1))
        for name in storage.listdir(folder)
        if (m := re.fullmatch(r"step_(\d+)\.json", name)) and int(m.group(1)) <= step
    )
    rows: dict[str, Any] = {}
    shots: dict[str, int] = {}
    newest = None
    for at in steps:
        try:
            data = json.loads(storage.read_bytes(storage.join(folder, f"step_{at}.json")))
        except (OSError, ValueError):  # a damaged file: the other steps' results are still the run's own
            continue
        if not (isinstance(data, dict) and isinstance(data.get("results"), dict) and data["results"]):
            continue
        for task, row in data["results"].items():
            rows[task] = row
            shots[task] = _n_shot(data, task)
        newest = at
    if not rows:
        return {"eval_results": {}, "eval_step": None, "eval_shots": {}}
    return {"eval_results": {"results": rows}, "eval_step": newest, "eval_shots": shots}


def _n_shot(data: dict[str, Any], task: str) -> int:
    """A task's few-shot count in lm-eval's results: `n-shot`, else its config's `num_fewshot`, else 0."""
    config = (data.get("configs") or {}).get(task) or {}
    for value in ((data.get("n-shot") or {}).get(task), config.get("num_fewshot")):
        if isinstance(value, int):
            return value
    subtasks = (data.get("group_subtasks") or {}).get(task) or []  # a group (mmlu): its subtasks' count
    return _n_shot(data, subtasks[0]) if subtasks else 0


def _base_model(run_dir: str, config: Config) -> str | None:
    """The base a fine-tune or context extension started from: the RUN:STEP it pinned (base.json), else
    checkpoint.restore_from as written; None for a run trained from scratch."""
    return pinned_base(run_dir, config) or None


def _stop_id(tokenizer: Any) -> int | None:
    """The token generation stops at: a chat model's end-of-turn token, else EOS."""
    eot = getattr(tokenizer, "end_of_turn_id", None)
    return tokenizer.eos_id if eot is None else eot


def _piece(tokenizer: Any, token_id: int | None) -> str | None:
    """How the stop token is written (`<|endoftext|>`, `</s>`): the tokenizer's own `token_text`."""
    return None if token_id is None else tokenizer.token_text(token_id)
