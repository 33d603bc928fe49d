"""What to read when: `data.path`, `data.mixture` or `data.stages` as one list of stages of weighted components.

A plain path is a one-stage, one-component plan. Components are mixed per row (weights are shares of rows, i.e. of
tokens), each repeating forever with its own seeded shuffle; a stage takes over at its `start_step`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import grain

from trainer.config import DataConfig
from trainer.data import DataError
from trainer.data.shards import Manifest, read_manifest


@dataclasses.dataclass(frozen=True)
class Component:
    """A prepared folder, its share of the rows, and its manifest."""

    path: str
    weight: float
    manifest: Manifest


@dataclasses.dataclass(frozen=True)
class Stage:
    """A configured stage (`data.stages[i]`, or the one stage of `data.path` / `data.mixture`) with its manifests
    read: the components read from `start_step` on."""

    start_step: int
    components: tuple[Component, ...]


def read_stages(data: DataConfig) -> list[Stage]:
    """The stages of a DataConfig with their manifests read, checked to share one tokenizer.

    A job reads them once and passes them down: every manifest is read once per job, wherever it is stored."""
    if data.stages:
        raw = [(s.start_step, [(c.path, c.weight) for c in s.mixture]) for s in data.stages]
    elif data.mixture:
        raw = [(0, [(c.path, c.weight) for c in data.mixture])]
    elif data.path:
        raw = [(0, [(data.path, 1.0)])]
    else:
        raise DataError("no training data configured: set data.path (a folder made by python -m trainer.data.prepare)")
    manifests: dict[str, Manifest] = {}
    stages = []
    for start, parts in raw:  # start steps, weights and empty stages: checked with the config (config/checks.py)
        components = []
        for path, weight in parts:
            if path not in manifests:
                manifests[path] = read_manifest(path)
            components.append(Component(path, float(weight), manifests[path]))
        stages.append(Stage(start, tuple(components)))
    _check_same_tokenizer(list(manifests.items()))
    return stages


def tokenizer_manifest(stages: Sequence[Stage]) -> Manifest:
    """The manifest that names the tokenizer (every component of every stage shares it: `read_stages` checks)."""
    return stages[0].components[0].manifest


def _check_same_tokenizer(manifests: list[tuple[str, Manifest]]) -> None:
    first_path, first = manifests[0]
    for path, manifest in manifests[1:]:
        if manifest.tokenizer.get("sha256") != first.tokenizer.get("sha256"):
            raise DataError(
                f"data folders {first_path} and {path} were prepared with different tokenizers; "
                "prepare every mixture component with the same --tokenizer"
            )


def stage_at(stages: Sequence[Stage], step: int) -> int:
    """Index of the stage that is active at `step` (the last one that has started)."""
    index = 0
    for i, stage in enumerate(stages):
        if stage.start_step <= step:
            index = i
    return index


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from several integers (run seed, stage, component), well spread so shuffles never coincide."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def mix(streams: Sequence[grain.IterDataset], weights: Sequence[float]) -> grain.IterDataset:
    """Interleave row streams in proportion to `weights` (deterministic; one stream passes through)."""
    if len(streams) == 1:
        return streams[0]
    return grain.IterDataset.mix(list(streams), [w / sum(weights) for w in weights])
