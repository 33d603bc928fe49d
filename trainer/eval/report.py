"""What an evaluation prints and writes: the harness's own table, a model-card table, and lm-eval's JSON schema."""

from __future__ import annotations

import json
import math
from typing import Any

from trainer import storage

DISPLAY = {
    "hellaswag": "HellaSwag",
    "arc_easy": "ARC-Easy",
    "arc_challenge": "ARC-Challenge",
    "winogrande": "WinoGrande",
    "piqa": "PIQA",
    "boolq": "BoolQ",
    "openbookqa": "OpenBookQA",
    "lambada_openai": "LAMBADA-OpenAI",
    "lambada_standard": "LAMBADA-Standard",
    "wikitext": "WikiText-2",
    "text_perplexity": "Text file",
}


def harness_table(results: dict[str, Any]) -> str:
    """The table `lm_eval` prints (every metric with its stderr)."""
    from lm_eval.utils import make_table

    return make_table(results)


def _metric(row: dict[str, Any], name: str) -> tuple[float, float] | None:
    value = row.get(f"{name},none")
    if not isinstance(value, (int, float)):
        return None
    stderr = row.get(f"{name}_stderr,none")
    return float(value), float(stderr) if isinstance(stderr, (int, float)) else math.nan


def _percent(metric: tuple[float, float] | None) -> str:
    if metric is None:
        return "–"
    value, stderr = metric
    return f"{100 * value:.2f}" + (f" ± {100 * stderr:.2f}" if math.isfinite(stderr) else "")


def card_markdown(results: dict[str, Any]) -> str:
    """A per-task breakdown for a model card: acc and acc_norm in %, perplexities, and the average of each task's
    headline score (acc_norm where the task has it, else acc)."""
    lines = ["| Task | acc (%) | acc_norm (%) | perplexity |", "|---|---:|---:|---:|"]
    headline = []
    for task, row in sorted(results["results"].items()):
        acc, norm = _metric(row, "acc"), _metric(row, "acc_norm")
        perplexities = [
            f"{name.split('_')[0]} {value[0]:.2f}" if name != "perplexity" else f"{value[0]:.2f}"
            for name in ("perplexity", "word_perplexity", "byte_perplexity")
            if (value := _metric(row, name)) is not None
        ]
        lines.append(
            f"| {DISPLAY.get(task, task)} | {_percent(acc)} | {_percent(norm)} | {', '.join(perplexities) or '–'} |"
        )
        if norm or acc:
            headline.append((norm or acc)[0])
    if headline:
        average = 100 * sum(headline) / len(headline)
        lines.append(f"| **Average** of {len(headline)} (acc_norm, else acc) | **{average:.2f}** | | |")
    return "\n".join(lines)


def to_json(results: dict[str, Any]) -> str:
    """The results in lm-eval's own schema (`results[task]["acc,none"]`, …), per-document samples left out."""
    from lm_eval.utils import handle_non_serializable

    return json.dumps(
        {k: v for k, v in results.items() if k != "samples"},
        indent=2,
        default=handle_non_serializable,
        ensure_ascii=False,
    )


def write(path: str, results: dict[str, Any]) -> None:
    """Write the results JSON (local or gs://) atomically."""
    storage.write_bytes_atomic(path, to_json(results).encode())


MERGED_KEYS = ("results", "configs", "versions", "n-shot", "higher_is_better", "n-samples")


def merge_into(path: str, results: dict[str, Any]) -> dict[str, Any]:
    """`results` over those already in `path`: tasks evaluated earlier at the same step stay, re-evaluated ones
    are replaced (a run folder keeps one file per step)."""
    if not storage.exists(path):
        return results
    previous = json.loads(storage.read_bytes(path))
    merged = dict(results)
    for key in MERGED_KEYS:
        if isinstance(previous.get(key), dict) and isinstance(results.get(key), dict):
            merged[key] = {**previous[key], **results[key]}
    return merged


def summary(results: dict[str, Any]) -> dict[str, float]:
    """Flat `task/metric` → value (what a training run logs beside its loss)."""
    out = {}
    for task, row in results["results"].items():
        for key, value in row.items():
            metric, _, filt = key.partition(",")
            if filt == "none" and not metric.endswith("_stderr") and isinstance(value, (int, float)):
                out[f"{task}/{metric}"] = float(value)
    return out
