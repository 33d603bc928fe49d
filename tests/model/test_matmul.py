"""trainer.model.matmul.contract: the projections' dot, whose CPU backward pass writes the weight gradient as a dot
XLA:CPU's fast library takes. Its gradients must be autodiff's, and on jax ≥ 0.11 its bfloat16 dots must stay
bfloat16 (the reason it exists: a transposed left operand made XLA run them in float32)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.model.matmul import contract


def _plain(x: jax.Array, kernel: jax.Array, in_dims: int) -> jax.Array:
    dims = (tuple(range(x.ndim - in_dims, x.ndim)), tuple(range(in_dims)))
    return jax.lax.dot_general(x, kernel, (dims, ((), ())))


@pytest.mark.parametrize(
    "x_shape, kernel_shape, in_dims",
    [
        ((2, 8, 16), (16, 24), 1),  # tokens 16: split in 8 blocks
        ((3, 5, 16), (16, 4, 6), 1),  # 15 tokens (no even split), a multi-axis output (query: [embed, heads, head_dim])
        ((2, 6, 4, 8), (4, 8, 16), 2),  # two contracted axes (out: [heads, head_dim, embed])
        ((1, 1, 32), (32, 8), 1),  # one token (sampling)
    ],
)
def test_gradients_equal_autodiff(x_shape, kernel_shape, in_dims):
    kx, kk, kd = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, x_shape, jnp.float32)
    kernel = jax.random.normal(kk, kernel_shape, jnp.float32)
    out_shape = x_shape[: len(x_shape) - in_dims] + kernel_shape[in_dims:]
    dy = jax.random.normal(kd, out_shape, jnp.float32)
    ours = jax.jit(jax.vjp(lambda a, b: contract(a, b, in_dims), x, kernel)[1])(dy)
    reference = jax.vjp(lambda a, b: _plain(a, b, in_dims), x, kernel)[1](dy)
    np.testing.assert_allclose(contract(x, kernel, in_dims), _plain(x, kernel, in_dims), rtol=1e-6)
    for got, want in zip(ours, reference):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(
    tuple(int(p) for p in jax.__version__.split(".")[:2]) < (0, 11),
    reason="XLA:CPU of jax 0.10 runs every bfloat16 dot in float32",
)
def test_bfloat16_gradient_dots_stay_bfloat16_on_the_cpu():
    x = jax.ShapeDtypeStruct((4, 256, 128), jnp.bfloat16)
    kernel = jax.ShapeDtypeStruct((128, 512), jnp.bfloat16)

    def loss(x: jax.Array, kernel: jax.Array) -> jax.Array:
        return jnp.sum(contract(x, kernel).astype(jnp.float32) ** 2)

    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, kernel).compile().as_text()
    dots = re.findall(r"= (\w+)\[[\d,]+\]\{[\d,]+\} dot\(", hlo)
    assert len(dots) == 3 and set(dots) == {"bf16"}, dots  # forward, input gradient, weight gradient
