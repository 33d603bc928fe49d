"""Parameter layouts: the scanned tree (`layers`, a leading layer axis) and the unrolled one (`layers_0` …).

Training uses either (`model.scan_layers`); exporters and importers walk layers one by one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def stack_layers(params: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """Unrolled parameters (`layers_0` … `layers_{n-1}`) → the scanned layout (`layers`, leading layer axis)."""
    out = {k: v for k, v in params.items() if not k.startswith("layers_")}
    out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[f"layers_{i}"] for i in range(num_layers)])
    return out


def unstack_layers(params: dict[str, Any]) -> dict[str, Any]:
    """The scanned layout → unrolled parameters, one subtree per layer (what exporters iterate over)."""
    if "layers" not in params:
        return dict(params)
    out = {k: v for k, v in params.items() if k != "layers"}
    num_layers = jax.tree.leaves(params["layers"])[0].shape[0]
    for i in range(num_layers):
        out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["layers"])
    return out
