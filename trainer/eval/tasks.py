"""lm-evaluation-harness tasks and groups read from local files, and the harness run over them.

Nothing downloads at evaluation time. A folder holds the task files (`trainer.eval.task_files`: one file per split,
`hellaswag.jsonl`, `arc_challenge.test.jsonl` + `arc_challenge.train.jsonl`, ...) and group folders
(`trainer.eval.groups`: `mmlu/`), each row in the Hugging Face dataset's own schema. For each task a YAML is generated
that `include:`s the harness's built-in task file (prompts, choices, metrics, filters and helper functions stay the
harness's), points its dataset at the local files and sets the task's few-shot count; the folder of those YAMLs is
the harness's `include_path`. Built-in names are kept, so results read as the harness's. Few-shot examples are
drawn by the harness's own sampler with its default seed, exactly as `lm_eval` does.

Code tasks (HumanEval, MBPP: `unsafe_code` in their YAML) run only with `allow_code_execution`, their programs in
`trainer.eval.sandbox` through `trainer.eval.code_eval`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from trainer.errors import ConfigError
from trainer.eval import groups, task_files
from trainer.eval.code_eval import harness_code_eval
from trainer.eval.sandbox import DEFAULT_LIMITS, Limits, isolation_line
from trainer.eval.suites import ZERO_SHOT, TaskSpec, parse_specs  # noqa: F401  (ZERO_SHOT: the default tasks)

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
    "gsm8k": "gsm8k/gsm8k.yaml",
    "humaneval": "humaneval/humaneval.yaml",
    "humaneval_64": "humaneval/humaneval_64.yaml",
    "mbpp": "mbpp/mbpp.yaml",
    "truthfulqa_mc2": "truthfulqa/truthfulqa_mc2.yaml",
    "drop": "drop/default.yaml",
}
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
    it imports the harness's task code or the datasets library, which read it once. Without the harness: one line."""
    for name, value in HARNESS_ENV.items():
        os.environ.setdefault(name, value)
    try:
        import lm_eval  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            f'evaluating tasks needs lm-evaluation-harness ({e.name} is missing): pip install -e ".[eval]"'
        ) from None


def builtin_yaml(task: str) -> Path:
    """The harness's own YAML file of `task`."""
    offline_harness()
    import lm_eval

    root = Path(lm_eval.__file__).parent / "tasks"
    if task in BUILTIN:
        return root / BUILTIN[task]
    if groups.is_group(task):
        raise ConfigError(f"{task!r} is a group: its subtasks' YAMLs are in {root / groups.GROUPS[task]}")
    for folder in groups.GROUPS.values():  # a group's subtask (mmlu_anatomy)
        if (root / folder / f"{task}.yaml").is_file():
            return root / folder / f"{task}.yaml"
    entry = task_index().get(task)
    if entry is None or entry.yaml_path is None or str(getattr(entry.kind, "name", "")) != "TASK":
        raise ConfigError(
            f"{task!r} is not a task of lm-evaluation-harness, nor a group read from files ({', '.join(groups.GROUPS)})"
        )
    return Path(entry.yaml_path)


@functools.cache
def task_index() -> dict[str, Any]:
    """The harness's index of every task it has (built once: ~15 s)."""
    from lm_eval.tasks import TaskManager

    return dict(TaskManager().task_index)


def builtin_config(task: str) -> dict[str, Any]:
    """The built-in task's YAML with its includes merged and `!function`s left unresolved (nothing imported)."""
    return builtin_config_at(builtin_yaml(task))


def scored_split(task_yaml: Path) -> tuple[str, str]:
    """Which split the harness evaluates a built-in task YAML on, as (YAML key, split name)."""
    return task_files.scored_split(builtin_config_at(task_yaml), str(task_yaml))


def is_code_task(spec: TaskSpec) -> bool:
    """Whether the harness marks the task `unsafe_code` (it runs generated programs)."""
    return not groups.is_group(spec.name) and bool(builtin_config(spec.name).get("unsafe_code"))


def default_shots(config: dict[str, Any], num_fewshot: int | None) -> int:
    """The shots a task without its own `:N` gets, as `simple_evaluate(num_fewshot=...)` decides: `num_fewshot`,
    except for a task whose YAML sets 0 (HumanEval), which stays 0; without it, the YAML's count."""
    own = config.get("num_fewshot")
    if num_fewshot is None or own == 0:
        return int(own or 0)
    return num_fewshot


def task_yaml(spec: TaskSpec, data_dir: str, num_fewshot: int | None = None) -> dict[str, Any]:
    """The YAML that points the built-in task at its local files, with the spec's few-shot count, else the one
    `num_fewshot` gives it (`default_shots`; per task, so a spec's own count is never overridden)."""
    config = builtin_config(spec.name)
    shots = spec.shots if spec.shots is not None else default_shots(config, num_fewshot)
    files = task_files.split_files(Path(data_dir), spec.name, config, shots)
    out = {"include": str(builtin_yaml(spec.name)), "task": spec.name, **task_files.dataset_override(config, files)}
    if spec.shots is not None or num_fewshot is not None:
        out["num_fewshot"] = shots
    return out


def as_specs(tasks: Sequence[TaskSpec | str]) -> list[TaskSpec]:
    """Task specs from specs or `name[:shots]` strings."""
    return [t if isinstance(t, TaskSpec) else parse_specs([t])[0] for t in tasks]


def check_tasks(specs: Sequence[TaskSpec | str], data_dir: str, num_fewshot: int | None = None) -> list[TaskSpec]:
    """Every file the specs need exists (before a checkpoint is loaded); the specs, parsed."""
    parsed = as_specs(specs)
    with tempfile.TemporaryDirectory(prefix="trainer-tasks-") as tmp:
        write_include_path(Path(tmp), parsed, data_dir, num_fewshot=num_fewshot)
    return parsed


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
    folder: Path,
    specs: Sequence[TaskSpec | str],
    data_dir: str | None,
    text_files: Sequence[str] = (),
    num_fewshot: int | None = None,
) -> None:
    """Generate the per-task and per-group YAMLs into `folder` (the harness's include_path)."""
    offline_harness()
    for spec in as_specs(specs):
        if data_dir is None:
            raise ConfigError("tasks need --data-dir DIR holding one file per task (docs/eval.md)")
        if groups.is_group(spec.name):
            shots = spec.shots if spec.shots is not None else (num_fewshot or 0)
            found = groups.group_files(data_dir, spec.name, shots, folder / "split")
            for name, config in found.groups.items():
                (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            for task, (base, files) in found.subtasks.items():
                config = builtin_config_at(base)
                out = {"include": str(base), "task": task, **task_files.dataset_override(config, files)}
                if spec.shots is not None or num_fewshot is not None:
                    out["num_fewshot"] = spec.shots if spec.shots is not None else default_shots(config, num_fewshot)
                (folder / f"{task}.yaml").write_text(yaml.safe_dump(out, sort_keys=False))
        else:
            config = task_yaml(spec, data_dir, num_fewshot)
            (folder / f"{spec.name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if text_files:
        (folder / f"{TEXT_TASK}.yaml").write_text(yaml.safe_dump(text_override(text_files, folder), sort_keys=False))


def builtin_config_at(path: Path) -> dict[str, Any]:
    """A built-in YAML file's merged config, `!function`s unresolved."""
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(path, resolve_func=False)


def evaluate(
    lm: Any,
    tasks: Sequence[TaskSpec | str],
    data_dir: str | None,
    text_files: Sequence[str] = (),
    limit: int | None = None,
    bootstrap_iters: int = 100000,
    log_samples: bool = False,
    *,
    allow_code_execution: bool = False,
    code_limits: Limits = DEFAULT_LIMITS,
    apply_chat_template: bool = False,
    fewshot_as_multiturn: bool = False,
    system_instruction: str | None = None,
    gen_kwargs: str | None = None,
    num_fewshot: int | None = None,
) -> dict[str, Any]:
    """Run the harness on `lm` over local task files (and text files); its results dict (lm-eval's schema).

    `tasks`: specs (`TaskSpec` or `name[:shots]` strings); `num_fewshot` the shots of those without their own, as
    `lm_eval --num_fewshot` sets them (a task whose YAML fixes 0 keeps 0). Code tasks need `allow_code_execution`;
    their programs run under `code_limits`. `apply_chat_template` / `fewshot_as_multiturn` / `system_instruction`
    are the harness's own options for chat models; `gen_kwargs` ("max_gen_toks=512,temperature=0") overrides every
    generation task's settings, as `lm_eval --gen_kwargs` does.
    """
    offline_harness()
    import datasets
    import lm_eval
    from lm_eval.tasks import TaskManager

    datasets.disable_progress_bars()

    specs = as_specs(tasks)
    names = [s.name for s in specs] + ([TEXT_TASK] if text_files else [])
    if not names:
        raise ConfigError("nothing to evaluate: name --tasks and/or --text files")
    code = [s.name for s in specs if is_code_task(s)]
    if code and not allow_code_execution:
        raise ConfigError(
            f"{', '.join(code)} run{'s' if len(code) == 1 else ''} the model's programs: pass --allow-code-execution "
            "(each program runs in a contained child process, docs/eval.md)"
        )
    if fewshot_as_multiturn and not apply_chat_template:
        raise ConfigError("--fewshot-as-multiturn needs --apply-chat-template")
    if code:
        print(isolation_line(), file=sys.stderr)
    code_eval = harness_code_eval(code_limits) if code else contextlib.nullcontext()
    with tempfile.TemporaryDirectory(prefix="trainer-tasks-") as tmp, code_eval:
        write_include_path(Path(tmp), specs, data_dir, text_files, num_fewshot)
        manager = TaskManager(include_path=tmp, include_defaults=False)
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=names,
            task_manager=manager,
            limit=limit,
            bootstrap_iters=bootstrap_iters,
            log_samples=log_samples,
            confirm_run_unsafe_code=bool(code),
            apply_chat_template=apply_chat_template,
            fewshot_as_multiturn=fewshot_as_multiturn,
            system_instruction=system_instruction,
            gen_kwargs=gen_kwargs,
        )
    return results
