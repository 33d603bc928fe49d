"""lm-evaluation-harness tasks read from local files, and the harness run over them.

Nothing downloads at evaluation time. A folder holds one file per task, named after the harness's task
(`hellaswag.jsonl`, `arc_easy.parquet`, …), each row in the Hugging Face dataset's own schema for the split the harness
scores. For each task a YAML is generated that `include:`s the harness's built-in task file (prompts, choices,
metrics and helper functions stay the harness's) and only points its dataset at the local file; the folder of those
YAMLs is the harness's `include_path`. The built-in task name is kept, so results read as the harness's.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from trainer.errors import ConfigError

ZERO_SHOT = ("hellaswag", "arc_easy", "arc_challenge", "winogrande", "piqa", "boolq", "openbookqa", "lambada_openai")
# Built-in task files of the tasks we document (finding any other one means indexing every harness task: ~15 s).
BUILTIN = {
    "hellaswag": "hellaswag/hellaswag.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "winogrande": "winogrande/default.yaml",
    "piqa": "piqa/piqa.yaml",
    "boolq": "super_glue/boolq/default.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
    "lambada_openai": "lambada/lambada_openai.yaml",
    "lambada_standard": "lambada/lambada_standard.yaml",
    "wikitext": "wikitext/wikitext.yaml",
}
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SPLITS = ("training_split", "validation_split", "test_split")
TEXT_TASK = "text_perplexity"  # a user's text files, scored like wikitext (word and byte perplexity)
HARNESS_ENV = {
    # Nothing downloads: the datasets library and the Hub client read these once, when first imported.
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    # The harness would fork this multithreaded (JAX) process for bootstrap stderrs: a known way to deadlock.
    "DISABLE_MULTIPROC": "1",
}


def offline_harness() -> None:
    """Set the harness's environment (offline, no forks) unless the user set it; called by every function here before
    it imports the harness's task code or the datasets library, which read it once."""
    for name, value in HARNESS_ENV.items():
        os.environ.setdefault(name, value)


def builtin_yaml(task: str) -> Path:
    """The harness's own YAML file of `task`."""
    offline_harness()
    import lm_eval

    root = Path(lm_eval.__file__).parent / "tasks"
    if task in BUILTIN:
        return root / BUILTIN[task]
    from lm_eval.tasks import TaskManager

    entry = TaskManager().task_index.get(task)
    if entry is None or entry.yaml_path is None or str(getattr(entry.kind, "name", "")) != "TASK":
        raise ConfigError(
            f"{task!r} is not a task of lm-evaluation-harness (groups can't be read from files: name their tasks)"
        )
    return Path(entry.yaml_path)


def scored_split(task_yaml: Path) -> tuple[str, str]:
    """Which split the harness evaluates a task on, as (YAML key, split name): test when it has one, else validation."""
    offline_harness()
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(task_yaml, resolve_func=False)
    for key in ("test_split", "validation_split"):
        if config.get(key):
            return key, config[key]
    raise ConfigError(f"{task_yaml} has neither a test nor a validation split")


def task_file(data_dir: str, task: str) -> Path:
    """DIR/<task>.jsonl, .json or .parquet (exactly one)."""
    found = [Path(data_dir) / f"{task}{ext}" for ext in BUILDERS if (Path(data_dir) / f"{task}{ext}").is_file()]
    if not found:
        raise ConfigError(
            f"no file for task {task} in {data_dir}: expected {task}.jsonl, .json or .parquet "
            "holding the split the harness scores (docs/eval.md says how to fetch it once)"
        )
    if len(found) > 1:
        raise ConfigError(f"several files for task {task} in {data_dir}: {', '.join(p.name for p in found)}; keep one")
    return found[0]


def override(task: str, data_file: Path) -> dict[str, Any]:
    """The YAML that points the built-in `task` at `data_file` (every other split switched off)."""
    base = builtin_yaml(task)
    key, split = scored_split(base)
    out: dict[str, Any] = {
        "include": str(base),
        "task": task,
        "dataset_path": BUILDERS[data_file.suffix],
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(data_file.resolve())}},
    }
    out.update({k: None for k in SPLITS})
    out[key] = split
    return out


def text_override(paths: Sequence[str], folder: Path) -> dict[str, Any]:
    """A wikitext-style perplexity task over the user's text files, one document per file, scored raw."""
    rows = folder / f"{TEXT_TASK}.jsonl"
    with open(rows, "w") as f:
        for path in paths:
            if not os.path.isfile(path):
                raise ConfigError(f"--text {path}: no such file")
            with open(path, encoding="utf-8", errors="replace") as text:
                f.write(json.dumps({"page": text.read()}) + "\n")
    return {
        "include": str(builtin_yaml("wikitext")),
        "task": TEXT_TASK,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(rows)}},
        "training_split": None,
        "validation_split": None,
        "test_split": "test",
        "doc_to_target": "{{page}}",
        "should_decontaminate": False,
    }


def write_include_path(
    folder: Path, tasks: Sequence[str], data_dir: str | None, text_files: Sequence[str] = ()
) -> None:
    """Generate the per-task YAMLs into `folder` (the harness's include_path)."""
    for task in tasks:
        if data_dir is None:
            raise ConfigError("tasks need --data-dir DIR holding one file per task (docs/eval.md)")
        spec = override(task, task_file(data_dir, task))
        (folder / f"{task}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    if text_files:
        (folder / f"{TEXT_TASK}.yaml").write_text(yaml.safe_dump(text_override(text_files, folder), sort_keys=False))


def evaluate(
    lm: Any,
    tasks: Sequence[str],
    data_dir: str | None,
    text_files: Sequence[str] = (),
    limit: int | None = None,
    bootstrap_iters: int = 100000,
    log_samples: bool = False,
) -> dict[str, Any]:
    """Run the harness on `lm` over local task files (and text files); its results dict (lm-eval's schema)."""
    offline_harness()
    import datasets
    import lm_eval
    from lm_eval.tasks import TaskManager

    datasets.disable_progress_bars()

    names = list(tasks) + ([TEXT_TASK] if text_files else [])
    if not names:
        raise ConfigError("nothing to evaluate: name --tasks and/or --text files")
    with tempfile.TemporaryDirectory(prefix="trainer-tasks-") as tmp:
        write_include_path(Path(tmp), tasks, data_dir, text_files)
        manager = TaskManager(include_path=tmp, include_defaults=False)
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=names,
            task_manager=manager,
            limit=limit,
            bootstrap_iters=bootstrap_iters,
            log_samples=log_samples,
        )
    return results
