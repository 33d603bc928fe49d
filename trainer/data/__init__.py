"""Text → tokenized ArrayRecord shards (`prepare`) → Grain batches (`pipeline`).

    prepare(...)                  trainer.data.prepare   (import it from there; also `python -m trainer.data.prepare`)
    load_tokenizer(dir_or_url)    trainer.data.tokenizer
    make_train_iterator(...)      trainer.data.pipeline
    make_eval_iterator(...)       trainer.data.pipeline
    describe(data)                trainer.data.pipeline
    ensure_prepared(data)         trainer.data.prepare

`prepare` is not re-exported here because the submodule of the same name shadows it once imported.
The other names are imported lazily, so `import trainer.data` stays cheap (no Grain, no SentencePiece) until one
is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from trainer.errors import DataError  # noqa: F401  (re-exported: `from trainer.data import DataError`)

_LAZY = {
    "ensure_prepared": "trainer.data.prepare",
    "load_tokenizer": "trainer.data.tokenizer",
    "Tokenizer": "trainer.data.tokenizer",
    "Manifest": "trainer.data.shards",
    "read_manifest": "trainer.data.shards",
    "make_train_iterator": "trainer.data.pipeline",
    "make_eval_iterator": "trainer.data.pipeline",
    "TrainIterator": "trainer.data.pipeline",
    "describe": "trainer.data.pipeline",
}

__all__ = ["DataError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trainer.data' has no attribute {name!r}")
