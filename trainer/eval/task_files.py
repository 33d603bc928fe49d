"""Where a task's local files are, one file per split of the Hugging Face dataset, in its own schema:

    DIR/<task>.<split>.jsonl     e.g. arc_challenge.test.jsonl, arc_challenge.train.jsonl, winogrande.train_xl.jsonl
    DIR/<task>.jsonl             the split the harness scores (the layout of zero-shot folders)

`.json` and `.parquet` work as well as `.jsonl`. The split names are the harness's (its YAML's `test_split`,
`validation_split`, `training_split`, `fewshot_split`): the few-shot examples come from the split the harness draws
them from, so a 25-shot ARC-Challenge needs `arc_challenge.train.jsonl` beside the scored test split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.errors import ConfigError

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")


def find(folder: Path, stem: str) -> Path | None:
    """FOLDER/<stem>.jsonl, .json or .parquet; None when there is none, an error when there are several."""
    found = [folder / f"{stem}{ext}" for ext in BUILDERS if (folder / f"{stem}{ext}").is_file()]
    if len(found) > 1:
        raise ConfigError(f"several files for {stem} in {folder}: {', '.join(p.name for p in found)}; keep one")
    return found[0] if found else None


def scored_split(config: dict[str, Any], where: str) -> tuple[str, str]:
    """Which split the harness evaluates a task on, as (YAML key, split name): test when it has one, else validation."""
    for key in ("test_split", "validation_split"):
        if config.get(key):
            return key, config[key]
    raise ConfigError(f"{where} has neither a test nor a validation split")


def fewshot_source(config: dict[str, Any]) -> str | None:
    """The split the harness draws few-shot examples from (None: fixed examples in the YAML, or only the test split)."""
    fewshot = config.get("fewshot_split") or (config.get("fewshot_config") or {}).get("split")
    if fewshot:
        return fewshot
    if (config.get("fewshot_config") or {}).get("samples"):
        return None
    return config.get("training_split") or config.get("validation_split")


def split_files(folder: Path, stem: str, config: dict[str, Any], shots: int) -> dict[str, Path]:
    """split name → file for every split of the task's YAML found in `folder`; the scored split must be there, and
    the few-shot split when `shots` > 0."""
    _, scored = scored_split(config, stem)
    files: dict[str, Path] = {}
    for key in SPLIT_KEYS:
        split = config.get(key) or (
            (config.get("fewshot_config") or {}).get("split") if key == "fewshot_split" else None
        )
        if split and split not in files and (path := find(folder, f"{stem}.{split}")) is not None:
            files[split] = path
    plain = find(folder, stem)
    if plain is not None:
        if scored in files:
            raise ConfigError(f"both {plain.name} and {files[scored].name} in {folder} hold {stem}'s {scored} split")
        files[scored] = plain
    if scored not in files:
        raise ConfigError(
            f"no file for task {stem} in {folder}: expected {stem}.jsonl or {stem}.{scored}.jsonl (.json, .parquet) "
            f"holding the {scored} split the harness scores (docs/eval.md says how to fetch it once)"
        )
    source = fewshot_source(config)
    if shots > 0 and source and source != scored and source not in files:
        raise ConfigError(
            f"{stem} with {shots} few-shot examples needs its {source} split, where the harness draws them from: "
            f"{folder / f'{stem}.{source}.jsonl'} (docs/eval.md)"
        )
    if len({BUILDERS[p.suffix] for p in files.values()}) > 1:
        raise ConfigError(f"{stem}'s split files mix JSON and Parquet ({', '.join(p.name for p in files.values())})")
    return files


def dataset_override(config: dict[str, Any], files: dict[str, Path]) -> dict[str, Any]:
    """The YAML keys that point a task at `files`: the dataset, and every split without a file switched off."""
    out: dict[str, Any] = {
        "dataset_path": BUILDERS[next(iter(files.values())).suffix],
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(path.resolve()) for split, path in files.items()}},
    }
    for key in SPLIT_KEYS:
        split = config.get(key)
        if key == "fewshot_split" and split is None:
            continue
        out[key] = split if split in files else None
    fewshot_config = config.get("fewshot_config")
    if isinstance(fewshot_config, dict) and fewshot_config.get("split") and fewshot_config["split"] not in files:
        out["fewshot_config"] = {**fewshot_config, "split": None}
    return out
