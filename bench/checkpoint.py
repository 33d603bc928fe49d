"""How long an async Orbax save blocks the training loop vs how long the full write takes, what the checkpoint
digests cost, and restore time.

    python -m bench.checkpoint [--sizes-mb 100 1000] [--dir /tmp/bench-ckpt]

For each state size (float32 arrays shaped like a transformer's, sharded over all devices): the time `save` returns
after (the loop is blocked that long) without digests, with them, and while the previous step is still being
digested (saves closer together than a digest takes); the time until the checkpoint is complete on disk and its
ratio to the blocking time (goal ≤ 5 %); the time the background thread takes to digest a step and to verify it
before a restore (also per GB of checkpoint files); and the time to restore it into the same shardings. Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from bench.common import log, machine_info, print_json
from trainer import checkpoint_digest
from trainer.checkpoint import Checkpointer
from trainer.config import CheckpointConfig


def make_state(megabytes: int, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """~`megabytes` of float32 [4096, N] matrices, sharded on their first axis over all devices."""
    sharding = NamedSharding(mesh, PartitionSpec("devices", None))
    columns = 4096
    per_matrix = 4096 * columns * 4
    count = max(1, round(megabytes * 2**20 / per_matrix))
    make = jax.jit(lambda key: jax.random.normal(key, (4096, columns), jnp.float32), out_shardings=sharding)
    return {f"w{i}": make(jax.random.key(i)) for i in range(count)}


def folder_bytes(folder: str) -> int:
    """Bytes of every file under `folder`."""
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


def saves(ckpt: Checkpointer, state: Any, iterator: Any, label: str, settle: bool) -> tuple[float, float, float]:
    """Three saves back to back, each started as soon as the previous write committed, its digest still running
    (`settle=False`: the worst case, saves closer together than a digest takes) or finished (`settle=True`: the
    usual case); the blocking and write times are the medians of the later two (the first pays one-time setup)."""
    from trainer.config import Config

    results = []
    for step in range(3):
        start = time.perf_counter()
        ckpt.save(step, state, iterator, Config(), force=True)
        blocked = time.perf_counter() - start
        ckpt.manager.wait_until_finished()
        written = time.perf_counter() - start
        results.append((blocked, written))
        log(f"{label}: save {step} blocked {blocked:.3f} s, written in {written:.3f} s")
        if settle:
            ckpt.wait()
    ckpt.wait()
    return (
        float(np.median([r[0] for r in results[1:]])),
        float(np.median([r[1] for r in results[1:]])),
        results[0][0],
    )


def measure(megabytes: int, directory: str, mesh: jax.sharding.Mesh) -> dict[str, float]:
    """Blocking time of save (with and without digests), full write time, digest and verify time, and restore time
    for one state size."""

    class Iterator:
        """The data-iterator part of a checkpoint: a tiny JSON state, as the real pipeline's."""

        def get_state(self) -> dict:
            return {"step": 0, "stage": 0, "streams": {}}

        def set_state(self, state: dict) -> None:
            pass

    state = make_state(megabytes, mesh)
    jax.block_until_ready(state)
    nbytes = sum(x.nbytes for x in state.values())
    options = CheckpointConfig(keep=2, async_save=True)
    plain = Checkpointer(f"{directory}/plain", options, digest=False)
    blocked_plain, _, _ = saves(plain, state, Iterator(), f"{megabytes} MB without digests", settle=True)
    plain.close()
    busy = Checkpointer(f"{directory}/busy", options)
    blocked_busy, _, _ = saves(busy, state, Iterator(), f"{megabytes} MB, previous digest running", settle=False)
    busy.close()
    ckpt = Checkpointer(directory, options)
    blocked, written, first_blocked = saves(ckpt, state, Iterator(), f"{megabytes} MB", settle=True)
    step_dir = ckpt.step_dir(ckpt.latest_step() or 0)
    on_disk = folder_bytes(step_dir)
    start = time.perf_counter()
    checkpoint_digest.compute(step_dir)
    digest = time.perf_counter() - start
    start = time.perf_counter()
    assert checkpoint_digest.damage(step_dir) is None
    verify = time.perf_counter() - start
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    start = time.perf_counter()
    restored = ckpt.restore(ckpt.latest_step(), abstract, Iterator())
    jax.block_until_ready(restored)
    restore = time.perf_counter() - start
    ckpt.close()
    return {
        "state_bytes": nbytes,
        "save_blocking_s": blocked,
        "save_blocking_s_without_digests": blocked_plain,
        "save_blocking_s_while_digesting": blocked_busy,
        "save_total_s": written,
        "blocking_fraction": blocked / written,
        "first_save_blocking_s": first_blocked,
        "step_file_bytes": on_disk,
        "digest_s": digest,
        "digest_s_per_gb": digest / (on_disk / 1e9),
        "verify_s": verify,
        "restore_s": restore,
        "write_gb_per_s": nbytes / written / 1e9,
    }


def main() -> None:
    """Measure each size and print the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes-mb",
        type=int,
        nargs="+",
        default=[100, 1000],
        help="train-state sizes to save and restore, in MiB (default: 100 1000)",
    )
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder, removed after)")
    args = parser.parse_args()
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("devices",))
    out = {"devices": jax.device_count(), "sizes": {}}
    for size in args.sizes_mb:
        directory = args.dir or tempfile.mkdtemp(prefix="bench-ckpt-")
        try:
            out["sizes"][f"{size}MB"] = measure(size, f"{directory}/{size}", mesh)
        finally:
            if args.dir is None:
                shutil.rmtree(directory, ignore_errors=True)
    out["goal_blocking_fraction_max"] = 0.05
    out["machine"] = machine_info()
    print_json(out)


if __name__ == "__main__":
    main()
