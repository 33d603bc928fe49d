"""What the TPU VM launcher is asked to do (`Job`, built once from the command line by tpu_vm.py) and the unit it
does it in (`Step`: a command, or a TPU API request, that prints as one line in the dry run)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from launch.tpu_catalog import Accelerator

NODE_DEAD = ("PREEMPTED", "TERMINATED")
QUEUED_DEAD = ("SUSPENDED", "FAILED")


@dataclass(frozen=True)
class Job:
    """Everything a plan depends on; built once from the command line by tpu_vm.py."""

    name: str
    zone: str
    project: str
    accelerator: Accelerator
    runtime: str
    spot: bool = False
    reserved: bool = False
    queued: bool = False
    api: str = "gcloud"  # "gcloud" (CLI) or "library" (google-cloud-tpu) for the TPU API calls
    ship: str = "wheel"  # "wheel" (build here, scp) or "git" (clone on the workers)
    config: str = ""  # the config file as given on this machine
    remote_config: str = ""  # its path relative to REMOTE_DIR on the workers
    copy_config: bool = False  # wheel mode: config is not under configs/, copy it explicitly
    overrides: tuple[str, ...] = ()  # section.key=value overrides, run.dir included
    run_dir: str | None = None
    repo_root: str = "."
    stage_dir: str = "/tmp/trainer-launch"
    python: str = "python3"  # interpreter used here to build the wheel
    git_url: str | None = None
    git_ref: str | None = None
    retries: int = 0
    poll_s: int = 30
    worker: str = "0"  # worker whose log `logs` streams

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.zone}"

    @property
    def dead_states(self) -> tuple[str, ...]:
        return QUEUED_DEAD if self.queued else NODE_DEAD

    @property
    def ready_state(self) -> str:
        return "ACTIVE" if self.queued else "READY"


@dataclass(frozen=True)
class Step:
    """One thing to do: a command (`argv`) or an API request (`api` + `request`)."""

    role: str  # describe, delete_dead, create, wait, stage, ship, install, start, stream, result, ...
    argv: tuple[str, ...] = ()
    api: str = ""  # "module.Client.method", e.g. "tpu_v2.TpuClient.create_node"
    request: Any = None  # a google-cloud-tpu request message
    note: str = ""  # printed after the step in the dry run

    def render(self) -> str:
        """One line: the shell-quoted command, or `Client.method(Request(field=...))`."""
        text = shlex.join(self.argv) if self.argv else f"{self.api}({format_request(self.request)})"
        return f"{text}  # {self.note}" if self.note else text


def format_request(msg: Any) -> str:
    """Readable one-liner of a proto-plus/protobuf message, showing only the fields set."""
    pb = type(msg).pb(msg) if hasattr(type(msg), "pb") else msg

    def fmt(m: Any) -> str:
        parts = []
        for fd, value in m.ListFields():
            if fd.message_type is not None:
                shown = ("[" + ", ".join(fmt(v) for v in value) + "]") if _repeated(fd) else fmt(value)
            elif fd.enum_type is not None:
                shown = fd.enum_type.values_by_number[value].name
            else:
                shown = repr(value)
            parts.append(f"{fd.name}={shown}")
        return f"{m.DESCRIPTOR.name}({', '.join(parts)})"

    return fmt(pb)


def _repeated(fd: Any) -> bool:
    return getattr(fd, "is_repeated", None) is True or getattr(fd, "label", None) == 3
