"""The LLaMA decoder: `transformer` (Linen modules), `attention` (kernels), `rope` (rotary embedding and its context
scalings), `layout` (scanned ↔ unrolled params), `flops` (parameter and FLOP counts, importable without JAX)."""
