"""What a run reports: the step line on the console, metrics.jsonl, TensorBoard scalars, the loss-curve PNG and, when
`log.wandb.project` is set, the same rows in Weights & Biases. `StepLog` is the loop's `log` hook: the training row
and step line, with throughput (tokens/s, TFLOP/s per device, MFU, ETA) from `Speedometer`.

Only process 0 writes. For a gs:// run folder the files are written to a local staging folder and copied up at
every checkpoint and at the end (object stores can't append).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import uuid
from typing import Any

import jax

from trainer import storage
from trainer.config import WandbConfig
from trainer.errors import ConfigError
from trainer.model import flops
from trainer.run.hooks import StepInfo
from trainer.run.timer import Timer


class MetricsLogger:
    """Appends metric rows to JSONL, TensorBoard and W&B and prints a compact step line."""

    def __init__(
        self,
        run_dir: str,
        enabled: bool,
        tensorboard: bool,
        wandb: WandbConfig | None = None,
        config: dict[str, Any] | None = None,
    ):
        self.run_dir = run_dir
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = []
        self.title_parts: tuple[str, int, int] | None = None
        self.wandb_run: Any = None
        if storage.is_remote(run_dir):
            digest = hashlib.sha1(run_dir.encode()).hexdigest()[:12]
            self.local_dir = os.path.join(tempfile.gettempdir(), f"trainer-run-{digest}")
        else:
            self.local_dir = run_dir
        self.writer = None
        if enabled:
            os.makedirs(self.local_dir, exist_ok=True)
            if storage.is_remote(run_dir) and storage.exists(storage.join(run_dir, "metrics.jsonl")):
                with open(os.path.join(self.local_dir, "metrics.jsonl"), "wb") as f:
                    f.write(storage.read_bytes(storage.join(run_dir, "metrics.jsonl")))
            self._load_existing_rows()
            if tensorboard:
                from tensorboardX import SummaryWriter

                self.writer = SummaryWriter(os.path.join(self.local_dir, "tensorboard"))
            if wandb is not None and wandb.project:
                self.wandb_run = _start_wandb(wandb, run_dir, self.local_dir, config or {})

    def describe_run(self, run_dir: str, params: int, tokens_per_step: int) -> None:
        """What the loss curve's title names: the run, its model size, and (from the last step) the tokens seen."""
        self.title_parts = (os.path.basename(run_dir.rstrip("/")) or run_dir, params, tokens_per_step)

    def title(self) -> str | None:
        """The loss curve's title: run name, parameters, tokens seen so far."""
        if self.title_parts is None:
            return None
        from trainer.run.budget import human_count

        name, params, tokens_per_step = self.title_parts
        steps = max((r["step"] for r in self.rows if "loss" in r), default=0)
        return f"{name}: {human_count(params)} parameters, {human_count(steps * tokens_per_step)} tokens seen"

    def _load_existing_rows(self) -> None:
        path = os.path.join(self.local_dir, "metrics.jsonl")
        if os.path.exists(path):
            with open(path) as f:
                self.rows = [json.loads(line) for line in f if line.strip()]

    def log(self, row: dict[str, Any]) -> None:
        """Record one row (it must hold `step`) in JSONL and TensorBoard."""
        if not self.enabled:
            return
        row = {k: (float(v) if hasattr(v, "dtype") else v) for k, v in row.items()}
        self.rows.append(row)
        with open(os.path.join(self.local_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and value is not None:
                    self.writer.add_scalar(key, value, row["step"])
        if self.wandb_run is not None:
            self.wandb_run.log(row)

    def say(self, text: str) -> None:
        """Print a line from process 0."""
        if self.enabled:
            print(text, file=sys.stdout, flush=True)

    def flush(self, plot: bool = False) -> None:
        """Write pending TensorBoard events, optionally the loss-curve PNG, and copy up to a remote run folder."""
        if not self.enabled:
            return
        if self.writer is not None:
            self.writer.flush()
        if plot:
            plot_losses(self.rows, os.path.join(self.local_dir, "loss.png"), self.title())
        if storage.is_remote(self.run_dir):
            self._upload()

    def _upload(self) -> None:
        for root, _, files in os.walk(self.local_dir):
            for name in files:
                local = os.path.join(root, name)
                relative = os.path.relpath(local, self.local_dir).replace(os.sep, "/")
                with open(local, "rb") as f:
                    storage.write_bytes_atomic(storage.join(self.run_dir, relative), f.read())

    def close(self) -> None:
        """Flush and release the TensorBoard writer; finish the W&B run (and copy its final files up)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
            if storage.is_remote(self.run_dir):
                self._upload()


def _start_wandb(options: WandbConfig, run_dir: str, local_dir: str, config: dict[str, Any]) -> Any:
    """A W&B run whose history gets every metrics row (keyed by our `step`); a restarted run continues the same
    W&B run: its id is kept in run.dir/wandb_id. Files go to run.dir/wandb (offline runs: `wandb sync` them)."""
    try:
        import wandb
    except ImportError:
        raise ConfigError(
            'log.wandb.project is set but the wandb package is missing: pip install -e ".[wandb]" '
            "(or set log.wandb.project=null)"
        ) from None
    id_path = storage.join(run_dir, "wandb_id")
    run_id = storage.read_bytes(id_path).decode().strip() if storage.exists(id_path) else uuid.uuid4().hex[:12]
    storage.write_bytes_atomic(id_path, run_id.encode())
    try:
        run = wandb.init(
            project=options.project,
            entity=options.entity,
            mode=options.mode,
            id=run_id,
            name=options.name or os.path.basename(run_dir.rstrip("/")),
            resume="allow",
            config=config,
            dir=local_dir,
        )
    except Exception as e:  # no login, no network, a wrong entity: whatever W&B raises, one line for the person
        reason = (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
        raise ConfigError(
            f"W&B did not start ({reason}): run `wandb login` or set WANDB_API_KEY, or log.wandb.mode=offline"
        ) from None
    run.define_metric("*", step_metric="step")
    return run


def plot_losses(rows: list[dict[str, Any]], path: str, title: str | None = None) -> None:
    """A PNG of training loss (and validation loss where measured) against the step, titled when `title` is given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@dataclasses.dataclass(frozen=True)
class Speedometer:
    """Turns steps and seconds into tokens/s, TFLOP/s per device, MFU and an ETA."""

    tokens_per_step: int
    flops_per_token: float
    devices: int
    peak_tflops: float | None
    hardware: str = ""  # "8 × TPU v4": recorded with the throughput (the model card reads it)

    def row(self, steps: int, seconds: float, remaining_steps: int) -> tuple[dict[str, Any], str]:
        """Throughput fields for metrics.jsonl and their text for the step line."""
        tokens_per_s = self.tokens_per_step * steps / seconds
        row: dict[str, Any] = {
            "tokens_per_s": tokens_per_s,
            "tflops_per_device": tokens_per_s * self.flops_per_token / self.devices / 1e12,
        }
        if self.hardware:
            row["hardware"] = self.hardware
        text = f" {tokens_per_s:,.0f} tok/s {row['tflops_per_device']:.3f} TFLOP/s/dev"
        utilisation = flops.mfu(tokens_per_s / self.devices, self.flops_per_token, self.peak_tflops)
        if utilisation is not None:
            row["mfu"] = utilisation
            text += f" mfu {100 * utilisation:.1f}%"
        return row, text + f" eta {duration(remaining_steps * seconds / steps)}"


class StepLog:
    """The loop's `log` hook: one metrics row and step line per call, with the throughput over the steps since the
    previous line and the training time they took (`Timer.window`: evaluation and compilation left out). The line of
    the step that compiled has no throughput."""

    def __init__(self, log: MetricsLogger, speed: Speedometer, timer: Timer, compiled_step: int):
        self.log, self.speed, self.timer = log, speed, timer
        self._previous = compiled_step  # steps up to this one are outside the throughput

    def __call__(self, info: StepInfo) -> None:
        values = jax.device_get(info.metrics)
        steps, self._previous = info.step - self._previous, info.step
        seconds = self.timer.window()
        row = {
            "step": info.step,
            "loss": float(values["loss"]),
            "learning_rate": float(values["learning_rate"]),
            "grad_norm": float(values["grad_norm"]),
            "skipped_steps": int(values["nonfinite_total"]),
        }
        text = ""
        if steps > 0:
            throughput, text = self.speed.row(steps, seconds, info.last - info.step)
            row.update(throughput)
        self.log.log(row)
        self.log.say(
            f"step {info.step:>6}/{info.last} loss {row['loss']:.4f} lr {row['learning_rate']:.2e} "
            f"gnorm {row['grad_norm']:.3f}{text}"
        )


def duration(seconds: float) -> str:
    """`1h05m` or `3m07s`: a wall time for people."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
