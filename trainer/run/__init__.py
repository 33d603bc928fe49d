"""A training job: `job` (checks, data, state fresh or restored), `loop` (the step loop), `hooks` (its periodic
actions, each with its interval), `timer` (where the wall time goes), `metrics` (console, metrics.jsonl, TensorBoard,
W&B), `profile` (jax.profiler traces), `summary` (the dry-run report), `budget` (compute budgets before a run),
`finetune` (starting from a base model), `supervise` (restarts), `goodput` (the ledger of wall time across restarts),
`extend` (continuing a run without changing the rates it trained with), `branch` (cooldown branches of a WSD run)."""
