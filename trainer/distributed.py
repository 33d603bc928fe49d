"""Joining the processes of a multi-host job with `jax.distributed`, before anything touches a device."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from trainer.config import ConfigError, DistributedConfig

# Set by launchers (launch/local.py, GPU clusters) when jax can't detect the cluster by itself.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} must be an integer") from None


def _on_multihost_tpu() -> bool:
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts or bool(os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"))


def initialize(config: DistributedConfig) -> None:
    """Call `jax.distributed.initialize` when this is one of several processes; a no-op for a single process.

    Explicit settings come from the config, else from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID;
    multi-host TPU VMs describe themselves, so jax's auto-detection is used there.
    """
    import jax

    num_processes = config.num_processes if config.num_processes is not None else _int_env(ENV_NUM_PROCESSES)
    if num_processes is not None and num_processes > 1:
        coordinator = config.coordinator_address or os.environ.get(ENV_COORDINATOR)
        process_id = config.process_id if config.process_id is not None else _int_env(ENV_PROCESS_ID)
        if not coordinator or process_id is None:
            raise ConfigError(
                f"{num_processes} processes need a coordinator address and a process id: set "
                f"{ENV_COORDINATOR} and {ENV_PROCESS_ID} (or distributed.coordinator_address / distributed.process_id)"
            )
        if not 0 <= process_id < num_processes:
            raise ConfigError(f"process id {process_id} is outside 0..{num_processes - 1}")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    elif _on_multihost_tpu():
        jax.distributed.initialize()


def allgather_json(obj: Any) -> list[Any]:
    """Every process's `obj` (JSON-able), in process order; a collective: all processes must call it together."""
    import jax

    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.array([len(data)], np.int32))).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: len(data)] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(row[:n])) for row, n in zip(gathered, lengths)]
