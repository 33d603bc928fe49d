"""What a run reports: the step line on the console, metrics.jsonl, TensorBoard scalars and the loss-curve PNG.

Only process 0 writes. For a gs:// run folder the files are written to a local staging folder and copied up at
every checkpoint and at the end (object stores can't append).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from typing import Any

from trainer import storage


class MetricsLogger:
    """Appends metric rows to JSONL and TensorBoard and prints a compact step line."""

    def __init__(self, run_dir: str, enabled: bool, tensorboard: bool):
        self.run_dir = run_dir
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = []
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
            plot_losses(self.rows, os.path.join(self.local_dir, "loss.png"))
        if storage.is_remote(self.run_dir):
            for root, _, files in os.walk(self.local_dir):
                for name in files:
                    local = os.path.join(root, name)
                    relative = os.path.relpath(local, self.local_dir).replace(os.sep, "/")
                    with open(local, "rb") as f:
                        storage.write_bytes_atomic(storage.join(self.run_dir, relative), f.read())

    def close(self) -> None:
        """Flush and release the TensorBoard writer."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def plot_losses(rows: list[dict[str, Any]], path: str) -> None:
    """A PNG of training loss (and validation loss where measured) against the step."""
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
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
