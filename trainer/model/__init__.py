"""The LLaMA decoder: `transformer` (Linen modules), `attention` (kernels), `matmul` (the projections' contraction),
`rope` (rotary embedding and its context scalings), `cache` (the KV cache of decoding), `lora` (low-rank adapters),
`layout` (scanned ↔ unrolled params), `flops` (parameter and FLOP counts, importable without JAX)."""
