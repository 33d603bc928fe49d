"""A prepared split's shards as one random-access record source whose failures name the damaged shard.

ArrayRecord/Riegeli raise bare `RuntimeError`s for a truncated or corrupt file (often from a reader thread, sometimes
without naming it); this source reads like Grain's ArrayRecord source and turns any such failure into a `DataError`
that names the shard and the command that rewrites it (the diagnosis is `integrity.check_shard`'s).
"""

from __future__ import annotations

import bisect
import itertools

import grain

from trainer.data import DataError
from trainer.data.integrity import check_shard, clause, shard_error
from trainer.data.shards import Manifest


class ShardSource:
    """A split's shards as one random-access source of records (Grain's ArrayRecord source underneath) whose
    failures name the shard. Opening reads every shard's footer, so a missing or truncated shard fails at start."""

    def __init__(self, manifest: Manifest, split: str):
        self._manifest = manifest
        self._infos = manifest.shards_of(split)
        try:
            self._source = grain.sources.ArrayRecordDataSource(manifest.shard_paths(split))
        except Exception as e:  # find the culprit; the library's message often doesn't name it
            raise self._diagnose(e) from None
        expected = sum(info.documents for info in self._infos)
        if len(self._source) != expected:
            raise self._diagnose(None)
        self._ends = list(itertools.accumulate(info.documents for info in self._infos))

    def _diagnose(self, error: BaseException | None) -> DataError:
        for info in self._infos:
            reason = check_shard(self._manifest.location, info)
            if reason is not None:
                return shard_error(self._manifest, info, reason)
        what = clause(error) if error is not None else "its record counts differ from the manifest"
        return DataError(
            f"can't read the shards of {self._manifest.location} ({what}); check them with "
            f"`python -m trainer.data.prepare --verify {self._manifest.location}`"
        )

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> bytes:
        try:
            return self._source[index]
        except Exception as e:
            raise self._read_error(index, e) from None

    def _read_error(self, index: int, error: BaseException) -> DataError:
        shard = bisect.bisect_right(self._ends, int(index))
        if shard >= len(self._infos):
            return DataError(f"record {index} is outside the shards of {self._manifest.location}: {clause(error)}")
        start = self._ends[shard - 1] if shard else 0
        info = self._infos[shard]
        return shard_error(self._manifest, info, f"record {int(index) - start} can't be read ({clause(error)})")

    def __repr__(self) -> str:
        return f"ShardSource({self._manifest.location!r}, {len(self._infos)} shards)"
