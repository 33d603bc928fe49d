"""A training job: `job` (checks, data, state fresh or restored), `loop` (the step loop), `metrics`, `summary`
(the dry-run report), `supervise` (restarts)."""
