"""pass@k of generated programs, offline: our stand-in for the `code_eval` metric that the harness's HumanEval and
MBPP tasks load from a hub at run time.

The harness's task code (`lm_eval/tasks/humaneval/utils.py`, `mbpp/utils.py`) does `evaluate.load("code_eval")` when
imported and then calls `.compute(references=..., predictions=..., k=...)`. `harness_code_eval()` puts a module named
`evaluate` in front of that import whose `load("code_eval")` returns a `CodeEval`: the harness's own prompts,
post-processing (`build_predictions`) and metric functions (`pass_at_k`, `pass_at_1`) run unchanged, and every
program runs in `trainer.eval.sandbox`. The estimator is the unbiased one of the HumanEval paper,
pass@k = E[1 - C(n-c, k) / C(n, k)] over problems with n samples of which c pass.
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from trainer.eval.sandbox import DEFAULT_LIMITS, Limits, run_program


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k for one problem with `n` samples of which `c` pass: 1 - C(n-c, k) / C(n, k),
    as a product (no huge binomials)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


class CodeEval:
    """`code_eval`'s interface over the sandbox: `compute(references, predictions, k)` →
    ({"pass@k": mean over problems}, per-problem outcomes). A program is a prediction, a newline and its reference
    (the tests); it passes when it exits 0 within `limits`."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS, workers: int | None = None):
        self.limits = limits
        self.workers = workers or max(1, os.cpu_count() or 1)

    def compute(
        self, references: Sequence[str], predictions: Sequence[Sequence[str]], k: Sequence[int] | int = (1, 10, 100)
    ) -> tuple[dict[str, float], dict[int, list[tuple[int, dict[str, Any]]]]]:
        """pass@k for each k that every problem has enough samples for, and each program's outcome."""
        ks = [k] if isinstance(k, int) else list(k)
        if len(references) != len(predictions):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        jobs = [
            (problem, sample, candidate + "\n" + reference)
            for problem, (reference, candidates) in enumerate(zip(references, predictions))
            for sample, candidate in enumerate(candidates)
        ]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            outcomes = list(pool.map(lambda job: run_program(job[2], self.limits), jobs))
        results: dict[int, list[tuple[int, dict[str, Any]]]] = {p: [] for p in range(len(references))}
        for (problem, sample, _), outcome in zip(jobs, outcomes):
            results[problem].append((sample, {"passed": outcome.passed, "result": outcome.reason}))
        counts = [(len(r), sum(o["passed"] for _, o in r)) for r in results.values()]
        scores = {
            f"pass@{kk}": float(np.mean([pass_at_k(n, c, kk) for n, c in counts]))
            for kk in ks
            if counts and all(n >= kk for n, _ in counts)
        }
        return scores, results


SHARED = CodeEval()  # the one the harness's helpers hold: it caches their module, so later runs reuse it


@contextlib.contextmanager
def harness_code_eval(limits: Limits = DEFAULT_LIMITS) -> Iterator[CodeEval]:
    """While the harness imports its code tasks' helpers, `evaluate.load("code_eval")` returns `SHARED`, set to
    `limits` (see the module docstring); the real `evaluate` module, if any, is back afterwards."""
    SHARED.limits = limits

    def load(name: str, *args: Any, **kwargs: Any) -> CodeEval:
        if name != "code_eval":
            raise ValueError(f"only code_eval is available offline, not {name!r}")
        return SHARED

    stand_in = types.ModuleType("evaluate")
    stand_in.load = load  # type: ignore[attr-defined]
    previous = sys.modules.get("evaluate")
    sys.modules["evaluate"] = stand_in
    try:
        yield SHARED
    finally:
        if previous is None:
            sys.modules.pop("evaluate", None)
        else:
            sys.modules["evaluate"] = previous
