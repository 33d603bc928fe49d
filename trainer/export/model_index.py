"""The `model-index` block of a model card: a run's evaluation results in the Hugging Face card metadata schema.

One entry per (task, metric): the task type, the dataset (display name, the Hub dataset the harness's task reads, its
config and split, the few-shot count as `args.num_few_shot`), the metric type and value. Accuracies are written in
percent, as the seeds' cards write them; perplexities and bits per byte as they are. Hugging Face's card parser
(`huggingface_hub.ModelCard`, `model_index_to_eval_results`) reads it back into EvalResult objects.
"""

from __future__ import annotations

import functools
from typing import Any

from trainer.eval.report import DISPLAY

TASK = {"type": "text-generation", "name": "Text Generation"}
_RAW = ("perplexity", "bits_per_byte")  # metrics written as they are; every other one is a fraction → percent


def model_index(name: str, results: dict[str, Any], shots: dict[str, int]) -> list[dict[str, Any]]:
    """The card's `model-index` list for lm-eval `results` ({task: {"acc,none": 0.31, ...}}) and each task's
    few-shot count."""
    entries = []
    for task, row in sorted(results.items()):
        metrics = []
        for key, value in row.items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            raw = any(r in metric for r in _RAW)
            where = f"{shots.get(task, 0)}-shot" if filt == "none" else f"{filt}, {shots.get(task, 0)}-shot"
            metrics.append(
                {
                    "type": metric,  # a filtered metric (GSM8K's strict-match, HumanEval's create_test) names it
                    "value": round(float(value) if raw else 100 * float(value), 4),
                    "name": f"{metric} ({where})",
                }
            )
        if not metrics:
            continue
        dataset = {"name": DISPLAY.get(task, task), **_dataset(task), "args": {"num_few_shot": shots.get(task, 0)}}
        entries.append({"task": dict(TASK), "dataset": dataset, "metrics": metrics})
    return [{"name": name, "results": entries}] if entries else []


@functools.cache
def _dataset(task: str) -> dict[str, str]:
    """The Hub dataset (type, config, split) lm-eval's built-in `task` scores, from its task YAML; the task's own
    name when the harness (the eval extra) is not installed or has no such task."""
    try:
        from lm_eval.tasks._yaml_loader import load_yaml

        from trainer.eval.tasks import builtin_yaml, scored_split

        path = builtin_yaml(task)
        spec = load_yaml(path, resolve_func=False)
        out = {"type": spec["dataset_path"]}
        if spec.get("dataset_name"):
            out["config"] = spec["dataset_name"]
        out["split"] = scored_split(path)[1]
        return out
    except Exception:  # no lm-eval, an unknown task, a YAML without dataset_path: the name is all there is
        return {"type": task}
