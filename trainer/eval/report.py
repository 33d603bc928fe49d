"""What an evaluation prints and writes: the harness's own table, a model-card table, and lm-eval's JSON schema."""

from __future__ import annotations

import json
import math
from typing import Any

from trainer import storage
from trainer.eval.groups import GROUPS

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
    "gsm8k": "GSM8K",
    "humaneval": "HumanEval",
    "mbpp": "MBPP",
    "mmlu": "MMLU",
    "truthfulqa_mc2": "TruthfulQA (mc2)",
    "drop": "DROP",
}
RAW_METRICS = ("perplexity", "bits_per_byte")  # shown as they are; every other metric is a fraction, shown in %


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


def metric_value(row: dict[str, Any], metric: str) -> tuple[str, float] | None:
    """(`metric,filter` key, value) of `metric` in a task's results row: the unfiltered one, else the first filter
    (GSM8K's `strict-match`, HumanEval's `create_test`)."""
    keys = [k for k in row if k.partition(",")[0] == metric and isinstance(row[k], (int, float))]
    if not keys:
        return None
    key = f"{metric},none" if f"{metric},none" in keys else keys[0]
    return key, float(row[key])


def suite_markdown(results: dict[str, Any], metrics: dict[str, str]) -> str:
    """A seed's table: one row per task with its few-shot count, the metric the seed reports and its value (accuracies
    and pass rates in %, perplexities as they are)."""
    lines = ["| Task | Shots | Metric | Value |", "|---|---:|---|---:|"]
    for task, metric in metrics.items():
        row = results["results"].get(task, {})
        found = metric_value(row, metric)
        shots = n_shot(results, task)
        if found is None:
            lines.append(f"| {DISPLAY.get(task, task)} | {shots} | {metric} | – |")
            continue
        key, value = found
        shown = f"{value:.2f}" if any(r in metric for r in RAW_METRICS) else f"{100 * value:.2f}"
        name, _, filt = key.partition(",")
        name = name if filt == "none" else f"{name} ({filt})"
        lines.append(f"| {DISPLAY.get(task, task)} | {shots} | {name} | {shown} |")
    return "\n".join(lines)


ZERO_SHOT_METRICS = {"acc", "acc_norm", "perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"}


def n_shot(results: dict[str, Any], task: str) -> int | str:
    """A task's few-shot count in lm-eval's results (a group's: its first subtask's); '–' when not recorded."""
    value = (results.get("n-shot") or {}).get(task)
    if isinstance(value, int):
        return value
    subtasks = (results.get("group_subtasks") or {}).get(task) or []
    return n_shot(results, subtasks[0]) if subtasks else "–"


def _shots(results: dict[str, Any], shots: dict[str, int] | None, task: str) -> int:
    if shots and task in shots:
        return int(shots[task])
    found = n_shot(results, task)
    return found if isinstance(found, int) else 0


def metrics_markdown(results: dict[str, Any], shots: dict[str, int] | None = None) -> str:
    """Every task's every metric with its filter and few-shot count (a group's subtasks left out when the group is
    there: MMLU's 57 subjects would drown the table)."""
    rows = results["results"]
    present = [g for g in GROUPS if g in rows]
    lines = ["| Task | Shots | Metric | Value |", "|---|---:|---|---:|"]
    for task, row in sorted(rows.items()):
        if any(task.startswith(f"{g}_") for g in present):
            continue
        for key, value in row.items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            raw = any(r in metric for r in RAW_METRICS)
            shown = f"{value:.2f}" if raw else f"{100 * value:.2f}"
            name = metric if filt == "none" else f"{metric} ({filt})"
            lines.append(f"| {DISPLAY.get(task, task)} | {_shots(results, shots, task)} | {name} | {shown} |")
    return "\n".join(lines)


def card_markdown(
    results: dict[str, Any], metrics: dict[str, str] | None = None, shots: dict[str, int] | None = None
) -> str:
    """With `metrics` (a suite's task → metric), the seed's table (`suite_markdown`). For zero-shot tasks scored by
    acc / acc_norm / perplexities, a per-task breakdown: acc and acc_norm in %, perplexities, and the average of each
    task's headline score (acc_norm where the task has it, else acc). Otherwise every metric with its shots
    (`metrics_markdown`)."""
    if metrics:
        return suite_markdown(results, metrics)
    keys = {k.partition(",") for row in results["results"].values() for k in row if "," in k}
    if any(_shots(results, shots, t) for t in results["results"]) or any(
        f != "none" or m.removesuffix("_stderr") not in ZERO_SHOT_METRICS for m, _, f in keys
    ):
        return metrics_markdown(results, shots)
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
