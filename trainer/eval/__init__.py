"""Evaluation of a model: `loss` (validation loss and perplexity on the held-out split), `tasks` (lm-evaluation-harness
tasks from local files), `harness` (our checkpoint, opened by `trainer.run_folder`, as an lm-eval model) on `scorer`
(log-probabilities and greedy tokens on the params' mesh), `periodic` (tasks scored during training), `report` (tables
and lm-eval's JSON), `__main__` (`python -m trainer.eval`) and `lm_eval_cli` (the `lm_eval` command with our model
registered)."""
