"""`contract(x, kernel, in_dims)`: x's last `in_dims` axes times the kernel's first ones, with a weight gradient laid
out for XLA:CPU's fast dot library.

Autodiff writes the weight gradient of `x @ W` as a dot that contracts the tokens, the *leading* axis of x
(`dW = xᵀ · dy`). XLA:CPU hands a dot to YNNPACK only when its left operand is row-major along the contraction, and
it turns a transpose into a layout change ({0,1}) instead of a copy — even behind an optimization barrier — so the
weight-gradient dots fall back: to Eigen's generic kernel, or on jax ≥ 0.11 to float32 dots of converted bfloat16
operands. On a CPU the backward pass here writes xᵀ out row-major (`_row_major_transpose`), so YNNPACK runs the
dot in the compute dtype. Measured on the small model (bf16 compute, jax 0.12, an Intel Xeon with AMX, whose bf16
dots run ~4× its f32 ones): 14.6 s per train step with autodiff's dots, 6.1 s with a barrier alone, 5.0 s with the
written-out transpose. Every other platform (TPU, GPU — including a TPU step compiled on this CPU) keeps autodiff's
own backward pass, chosen when the step is lowered (`jax.lax.platform_dependent`), so their programs are unchanged.
"""

from __future__ import annotations

import math
from functools import partial

import jax


def _forward(x: jax.Array, kernel: jax.Array, in_dims: int) -> jax.Array:
    contract = (tuple(range(x.ndim - in_dims, x.ndim)), tuple(range(in_dims)))
    return jax.lax.dot_general(x, kernel, (contract, ((), ())))


def _row_major_transpose(rows: jax.Array) -> jax.Array:
    """rowsᵀ written out row-major. XLA makes a plain transpose (even behind an optimization barrier) a layout
    change, {0,1}, and a dot whose left operand has that layout is not one YNNPACK takes: XLA:CPU then runs it in
    float32 (jax ≥ 0.11) or on Eigen. A transpose to three axes behind the barrier is written out; splitting the
    token axis in a few blocks (not a trailing axis of 1) keeps XLA's transpose loop vectorised."""
    tokens, k = rows.shape
    split = next(s for s in (8, 4, 2, 1) if tokens % s == 0)
    blocks = rows.reshape(split, tokens // split, k).transpose(2, 0, 1)
    return jax.lax.optimization_barrier(blocks).reshape(k, tokens)


def _cpu_backward(x: jax.Array, kernel: jax.Array, dy: jax.Array, in_dims: int) -> tuple[jax.Array, jax.Array]:
    k = math.prod(kernel.shape[:in_dims])
    rows = x.reshape(-1, k)
    dy_rows = dy.reshape(rows.shape[0], -1)
    contract = (((1,), (0,)), ((), ()))
    d_kernel = jax.lax.dot_general(_row_major_transpose(rows), dy_rows, contract)
    out_dims = dy.ndim - (x.ndim - in_dims)
    d_x = jax.lax.dot_general(
        dy, kernel, ((tuple(range(dy.ndim - out_dims, dy.ndim)), tuple(range(in_dims, kernel.ndim))), ((), ()))
    )
    return d_x.astype(x.dtype), d_kernel.reshape(kernel.shape).astype(kernel.dtype)


def _autodiff_backward(x: jax.Array, kernel: jax.Array, dy: jax.Array, in_dims: int) -> tuple[jax.Array, jax.Array]:
    return jax.vjp(lambda a, b: _forward(a, b, in_dims), x, kernel)[1](dy)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _contract(x: jax.Array, kernel: jax.Array, in_dims: int) -> jax.Array:
    return _forward(x, kernel, in_dims)


def _contract_fwd(x: jax.Array, kernel: jax.Array, in_dims: int) -> tuple[jax.Array, tuple]:
    return _forward(x, kernel, in_dims), (x, kernel)


def _contract_bwd(in_dims: int, residuals: tuple, dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = residuals
    return jax.lax.platform_dependent(
        x,
        kernel,
        dy,
        cpu=partial(_cpu_backward, in_dims=in_dims),
        default=partial(_autodiff_backward, in_dims=in_dims),
    )


_contract.defvjp(_contract_fwd, _contract_bwd)


def contract(x: jax.Array, kernel: jax.Array, in_dims: int = 1) -> jax.Array:
    """x [..., *in] · kernel [*in, *out] → [..., *out]: `jax.lax.dot_general` with a CPU-friendly weight gradient."""
    return _contract(x, kernel, in_dims)
