"""Whether a run's documents began with BOS: one fact, recorded in the run folder, read by every consumer.

Training records it when it starts (`record_bos`, from the data manifests; every folder of a mixture or of the stages
must agree), `trainer.convert_from_hf` records what the imported tokenizer does (its `add_bos_token` / post-processor).
Generation, evaluation, every export and llama.cpp's `add_bos_token` read `run_adds_bos`. A run trained before the
record existed falls back to its data manifest when that is readable (local or gs://), else fails in one line: guessing
would prepend a token the model never saw first (GPT-2's BOS is its EOS, `<|endoftext|>`).
"""

from __future__ import annotations

from trainer import storage
from trainer.config import Config
from trainer.errors import ConfigError, TrainerError, first_line

BOS_FILE = "bos.json"  # {"bos": true|false, "source": where the fact came from}


def data_adds_bos(config: Config) -> bool:
    """Whether the run's prepared data starts documents with BOS (each manifest's `bos`); a ConfigError when the folders
    of a mixture or of the stages disagree (a model would learn two conventions and generation could honour one)."""
    if config.data.synthetic:
        return False
    d = config.data
    paths = [d.path] if d.path else []
    paths += [c.path for c in d.mixture] + [c.path for s in d.stages for c in s.mixture]
    flags: dict[bool, str] = {}
    for path in dict.fromkeys(paths):
        manifest = storage.read_json(storage.join(path, "manifest.json"))
        if not isinstance(manifest, dict) or not isinstance(manifest.get("bos"), bool):
            raise ConfigError(f"{path}/manifest.json does not say whether documents start with BOS (no `bos`)")
        flags.setdefault(manifest["bos"], path)
    if not flags:
        raise ConfigError("no training data configured: set data.path")
    if len(flags) > 1:
        raise ConfigError(
            f"data folders disagree on BOS: {flags[True]} was prepared with --bos, {flags[False]} "
            "without; prepare every folder of the mixture/stages alike"
        )
    return next(iter(flags))


def check_same_bos(run_dir: str, bos: bool) -> None:
    """Refuse in one line to continue a run on data of the other BOS convention (its model learnt one)."""
    path = storage.join(run_dir, BOS_FILE)
    if storage.exists(path) and bool(storage.read_json(path).get("bos")) != bos:
        raise ConfigError(
            f"{run_dir} was trained on documents {_with(not bos)} BOS, the data now has them "
            f"{_with(bos)}: use a new run.dir or prepare the data as before"
        )


def record_bos(run_dir: str, bos: bool, source: str) -> None:
    """Store the fact in RUN_DIR/bos.json (`source` says where it came from, for a person reading the folder)."""
    storage.write_json_atomic(storage.join(run_dir, BOS_FILE), {"bos": bool(bos), "source": source})


def run_adds_bos(run_dir: str, config: Config) -> bool:
    """Whether prompts to this run's model start with BOS, as its training documents did: RUN_DIR/bos.json, else (a
    run older than the record) the data manifests; a ConfigError naming the fix when neither can be read."""
    path = storage.join(run_dir, BOS_FILE)
    if storage.exists(path):
        return bool(storage.read_json(path)["bos"])
    if config.data.synthetic:
        return False
    fix = (
        f'write {{"bos": true}} or {{"bos": false}} to {path} (true when the data was prepared with --bos; '
        "a run imported with trainer.convert_from_hf: import it again)"
    )
    if not (config.data.path or config.data.mixture or config.data.stages):
        raise ConfigError(f"{run_dir} does not record whether its documents began with BOS and names no data: {fix}")
    try:
        return data_adds_bos(config)
    except (TrainerError, OSError, ValueError) as e:  # a folder gone, a bucket unreachable, a damaged file
        raise ConfigError(
            f"{run_dir} does not record whether its documents began with BOS and its data can't "
            f"tell ({first_line(e)}): {fix}"
        ) from None


def _with(bos: object) -> str:
    return "starting with" if bos else "without"
