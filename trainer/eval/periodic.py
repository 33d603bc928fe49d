"""lm-eval tasks during training: `eval.tasks` (task specs as `python -m trainer.eval --tasks` takes them:
`arc_challenge:25`, `mmlu:5`, ...) scored every `eval.tasks_every_steps` on the live params, logged
beside the loss (`hellaswag/acc_norm`, `lambada_openai/perplexity`, …) and written to run.dir/eval/step_<N>.json.

Every process scores the same documents in the same order (the device calls are collective); only the main process
writes. The model is built once, so each evaluation reuses the compiled programs; only the params change.
"""

from __future__ import annotations

from typing import Any

import jax

from trainer import storage
from trainer.config import Config
from trainer.errors import ConfigError


class TaskEvaluator:
    """Scores `config.eval.tasks` on params of the run; checks the extra and the task files when built."""

    def __init__(self, config: Config, mesh: Any):
        try:
            from trainer.eval import tasks
        except ImportError as e:
            raise ConfigError(
                f'eval.tasks needs lm-evaluation-harness ({e.name} is missing): pip install -e ".[eval]"'
            ) from None
        e = config.eval
        if not e.tasks_data_dir:
            raise ConfigError(
                "eval.tasks reads its documents from eval.tasks_data_dir (one file per task, docs/eval.md)"
            )
        self.specs = tasks.check_tasks(e.tasks, e.tasks_data_dir)  # `name` or `name:shots`, files checked now
        code = [s.name for s in self.specs if tasks.is_code_task(s)]
        if code:
            raise ConfigError(f"eval.tasks: {', '.join(code)} run programs; score them after training (docs/eval.md)")
        self.config, self.mesh = config, mesh
        self._lm: Any = None

    def _model(self, params: Any) -> Any:
        if self._lm is None:
            from trainer.data.bos import run_adds_bos
            from trainer.data.tokenizer import load_tokenizer
            from trainer.eval.harness import TrainerLM

            tokenizer = load_tokenizer(storage.join(self.config.run.dir, "tokenizer"))
            self._lm = TrainerLM.from_parts(
                self.config, self.mesh, params, tokenizer, run_adds_bos(self.config.run.dir, self.config)
            )
        self._lm.scorer.params = params
        return self._lm

    def __call__(self, params: Any, step: int) -> dict[str, float]:
        """`task/metric` → value at `step` (the full results go to run.dir/eval/step_<step>.json)."""
        from trainer.eval import report, tasks

        e = self.config.eval
        results = tasks.evaluate(
            self._model(params), self.specs, e.tasks_data_dir, limit=e.tasks_limit, bootstrap_iters=0
        )
        if jax.process_index() == 0:
            path = storage.join(self.config.run.dir, "eval", f"step_{step}.json")
            report.write(path, report.merge_into(path, results))
        return report.summary(results)
