"""The LLaMA decoder: `transformer` (Linen modules), `attention` (kernels), `layout` (scanned ↔ unrolled params),
`flops` (parameter and FLOP counts, importable without JAX)."""
