"""Uneven sharding, said out loud: which logical axes split unevenly over their mesh axes, what the padding costs,
and a refusal where some devices would hold nothing but padding.

XLA shards a dimension that the device count doesn't divide by padding it up to the next multiple: 14 heads over
`tensor=4` run as 16, so an eighth of the attention's weights and work per device is zeros. That is a choice a
person may make knowingly; 2 kv heads over 4 devices (half of them holding only padding) is a mistake.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trainer.config import Config
from trainer.errors import ConfigError

# What each logical axis sizes, for the line that names the cost.
_WHAT = {
    "batch": "rows of each microbatch",
    "length": "positions",
    "embed": "width",
    "heads": "attention heads",
    "kv_heads": "kv heads",
    "head_dim": "head dims",
    "mlp": "MLP width",
    "vocab": "vocabulary (embedding and logits)",
    "layers": "layers",
    "norm": "norm scales",
}


@dataclass(frozen=True)
class Uneven:
    """One logical axis that its mesh axes don't divide."""

    logical: str
    size: int
    axes: tuple[str, ...]
    shards: int

    @property
    def padded(self) -> int:
        """The size XLA computes with: the next multiple of the shard count."""
        return -(-self.size // self.shards) * self.shards

    @property
    def waste(self) -> float:
        """Fraction of this axis's per-device work and memory that is padding."""
        return (self.padded - self.size) / self.padded

    def describe(self) -> str:
        """e.g. 'heads 14 over tensor=4 → 16: 12.5% of the attention heads per device is padding'."""
        over = "×".join(self.axes)
        return (
            f"{self.logical} {self.size} over {over}={self.shards} → {self.padded}: "
            f"{self.waste * 100:.2g}% of the {_WHAT.get(self.logical, self.logical)} per device is padding"
        )


def axis_sizes(config: Config) -> dict[str, int]:
    """The size of every logical axis the model and the step name."""
    m, t = config.model, config.train
    return {
        "batch": t.global_batch_size // t.microbatches,
        "length": t.seq_len,
        "embed": m.embed_dim,
        "heads": m.num_heads,
        "kv_heads": m.num_kv_heads,
        "head_dim": m.resolved_head_dim,
        "mlp": m.mlp_dim,
        "vocab": m.vocab_size,
        "layers": m.num_layers,
        "norm": m.embed_dim,
    }


def uneven_axes(config: Config, mesh_shape: dict[str, int]) -> list[Uneven]:
    """Every logical axis whose mesh axes (from `mesh.rules`) don't divide its size."""
    out = []
    for logical, size in axis_sizes(config).items():
        axes = tuple(config.mesh.rules.get(logical) or ())
        shards = math.prod(mesh_shape.get(a, 1) for a in axes)
        if shards > 1 and size % shards:
            out.append(Uneven(logical, size, axes, shards))
    return out


def check(config: Config, mesh_shape: dict[str, int]) -> list[Uneven]:
    """Refuse, in one line, an axis split over more devices than it has elements; return the merely uneven ones."""
    uneven = uneven_axes(config, mesh_shape)
    for u in uneven:
        if u.logical != "batch" and u.size < u.shards:
            sizes = ", ".join(f"mesh.{a}={mesh_shape[a]}" for a in u.axes)
            raise ConfigError(
                f"{u.logical} ({u.size}) is split over {u.shards} devices ({sizes}): {u.shards - u.size} of them "
                f"would hold only padding; use mesh sizes whose product along mesh.rules.{u.logical} divides "
                f"{u.size}, or set mesh.rules.{u.logical}=null to replicate it"
            )
    return uneven
