"""Groups of tasks (`mmlu`: 57 subjects in 4 categories) read from local files, aggregated by the harness itself.

A group's local data is either a folder or one file per split:

    DIR/mmlu/<subject>.test.jsonl (+ <subject>.dev.jsonl for few-shot)      a folder per group, a file per subject
    DIR/mmlu.test.jsonl (+ mmlu.dev.jsonl)                                 one file, rows with a `subject` column
                                                                           (the schema of cais/mmlu's `all` config)

Subjects without a file are left out; the harness's own group YAMLs (their tags and `aggregate_metric_list`, e.g.
MMLU's accuracy weighted by subtask size) are written beside the subtasks, so the aggregate is the harness's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import ConfigError
from trainer.eval import task_files

# Built-in folders of the groups we document: the group YAMLs and their subtasks' YAMLs.
GROUPS = {"mmlu": "mmlu/default"}


@dataclass
class GroupFiles:
    """What to write for a group: its (and its subgroups') YAMLs, and each present subtask's YAML path and data."""

    groups: dict[str, dict[str, Any]]  # file name → YAML of a group
    subtasks: dict[str, tuple[Path, dict[str, Path]]]  # task name → (built-in YAML, split → file)


def is_group(name: str) -> bool:
    """Whether `name` is one of the groups read from local files."""
    return name in GROUPS


def _load(path: Path) -> dict[str, Any]:
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(path, resolve_func=False)


def _split_by_subject(folder: Path, group: str, work: Path) -> Path | None:
    """One file per split with a `subject` column → WORK/<group>/<subject>.<split>.jsonl; None without such files."""
    written = None
    for split in ("test", "validation", "dev"):
        path = task_files.find(folder, f"{group}.{split}") or (
            task_files.find(folder, group) if split == "test" else None
        )
        if path is None:
            continue
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        elif path.suffix == ".json":
            rows = json.loads(path.read_text())
        else:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        by_subject: dict[str, list[dict]] = {}
        for row in rows:
            if "subject" not in row:
                raise ConfigError(f"{path}: a row without `subject` (one file per {group} split needs that column)")
            by_subject.setdefault(row["subject"], []).append(row)
        written = work / group
        written.mkdir(parents=True, exist_ok=True)
        for subject, subject_rows in by_subject.items():
            with open(written / f"{subject}.{split}.jsonl", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in subject_rows)
    return written


def group_files(data_dir: str, group: str, shots: int, work: Path) -> GroupFiles:
    """The group's YAMLs and its subtasks found in `data_dir` (see the module docstring); `work` holds split files."""
    import lm_eval

    root = Path(lm_eval.__file__).parent / "tasks" / GROUPS[group]
    folder = Path(data_dir) / group
    if not folder.is_dir():
        split = _split_by_subject(Path(data_dir), group, work)
        if split is None:
            raise ConfigError(
                f"no files for group {group} in {data_dir}: expected a folder {group}/ with <subject>.test.jsonl "
                f"files, or {group}.test.jsonl with a `subject` column (docs/eval.md)"
            )
        folder = split
    group_yamls: dict[str, dict[str, Any]] = {}
    subtasks: dict[str, tuple[Path, dict[str, Path]]] = {}
    tags: dict[str, list[str]] = {}
    for path in sorted(root.glob("*.yaml")) + sorted(root.glob("_*_yaml")):
        config = _load(path)
        if "group" in config:
            group_yamls[path.name] = config
        elif "task" in config and config.get("dataset_name"):
            stem = str(config["dataset_name"])
            if task_files.find(folder, f"{stem}.test") is None and task_files.find(folder, stem) is None:
                continue
            subtasks[config["task"]] = (path, task_files.split_files(folder, stem, config, shots))
            tags.setdefault(str(config.get("tag")), []).append(config["task"])
    if not subtasks:
        raise ConfigError(f"no subject of {group} has a file in {folder} (e.g. {folder}/anatomy.test.jsonl)")
    return GroupFiles(_present(group_yamls, set(tags) | set(subtasks)), subtasks)


def _present(group_yamls: dict[str, dict[str, Any]], members: set[str]) -> dict[str, dict[str, Any]]:
    """The group YAMLs with a member present (a tag or subtask with files, or a kept subgroup), each listing only
    those members; repeated until no group is empty."""
    kept = dict(group_yamls)
    while True:
        names = {c["group"] for c in kept.values()}
        changed = False
        for file, config in list(kept.items()):
            tasks = [t for t in config.get("task", []) if t in members or t in names]
            if not tasks:
                del kept[file]
                changed = True
            elif tasks != config.get("task"):
                kept[file] = {**config, "task": tasks}
                changed = True
        if not changed:
            return kept
