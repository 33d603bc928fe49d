"""Evaluation of a model: `loss` (validation loss and perplexity on the held-out split), `suites` (task specs
`name:shots` and the seeds' presets), `tasks` (lm-evaluation-harness tasks from local files: `task_files` one file
per split, `groups` MMLU-style groups), `harness` (our checkpoint, opened by `trainer.run_folder`, as an lm-eval
model) on `scorer` (log-probabilities on the params' mesh) and the KV-cache generator, `code_eval` (pass@k of
generated programs, each run in `sandbox`), `periodic` (tasks scored during training), `report` (tables and lm-eval's
JSON), `__main__` (`python -m trainer.eval`) and `lm_eval_cli` (the `lm_eval` command with our model registered)."""
