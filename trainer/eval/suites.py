"""What to evaluate, as a person writes it: task specs (`arc_challenge:25` = the task with 25 few-shot examples,
`mmlu` = the task or group with the shots its YAML sets) and the presets that reproduce each seed's table.

A spec without `:N` keeps the harness's own default (its YAML's `num_fewshot`, else 0) unless `--num-fewshot` sets
it, by the harness's own rule (a task whose YAML fixes 0, HumanEval, keeps 0). Presets name the shots and the metric
each seed reports, so a table reads like the card's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from trainer.errors import ConfigError


@dataclass(frozen=True)
class TaskSpec:
    """One task or group with its few-shot count (None: the harness's default) and the metric a table shows."""

    name: str
    shots: int | None = None
    metric: str | None = None  # the headline metric a suite reports (e.g. acc_norm); None: the task's first

    def __str__(self) -> str:
        return self.name if self.shots is None else f"{self.name}:{self.shots}"


def parse_spec(text: str) -> TaskSpec:
    """`name` or `name:N` (N ≥ 0 few-shot examples)."""
    name, colon, shots = text.strip().partition(":")
    if not name:
        raise ConfigError(f"empty task name in {text!r}")
    if not colon:
        return TaskSpec(name)
    if not shots.isdigit():
        raise ConfigError(f"task spec {text!r}: the number after ':' is the few-shot count (e.g. arc_challenge:25)")
    return TaskSpec(name, int(shots))


def parse_specs(items: Iterable[str] | str) -> list[TaskSpec]:
    """Specs from a comma-separated string or a list of strings (`eval.tasks`); duplicates are refused."""
    texts = items.split(",") if isinstance(items, str) else [t for item in items for t in str(item).split(",")]
    specs = [parse_spec(t) for t in texts if t.strip()]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"a task appears twice in {', '.join(map(str, specs))}: the harness scores it once")
    return specs


ZERO_SHOT = ("hellaswag", "arc_easy", "arc_challenge", "winogrande", "piqa", "boolq", "openbookqa", "lambada_openai")

SUITES: dict[str, tuple[TaskSpec, ...]] = {
    # KodaLite-1.3B: 8 zero-shot tasks, acc
    "kodalite": tuple(TaskSpec(t, 0) for t in ZERO_SHOT),
    # SmallCoder-303M: code pass@1, GSM8K exact match, Wikitext word perplexity, ARC/HellaSwag acc_norm
    "smallcoder": (
        TaskSpec("humaneval", 0, "pass@1"),
        TaskSpec("mbpp", 3, "pass_at_1"),
        TaskSpec("gsm8k", 0, "exact_match"),
        TaskSpec("wikitext", 0, "word_perplexity"),
        TaskSpec("arc_easy", 0, "acc_norm"),
        TaskSpec("arc_challenge", 0, "acc_norm"),
        TaskSpec("hellaswag", 0, "acc_norm"),
    ),
    # The Open LLM Leaderboard's first version, as LiteLlama-460M reports it (not the harness's `leaderboard`, v2)
    "leaderboard-v1": (
        TaskSpec("arc_challenge", 25, "acc_norm"),
        TaskSpec("hellaswag", 10, "acc_norm"),
        TaskSpec("mmlu", 5, "acc"),
        TaskSpec("truthfulqa_mc2", 0, "acc"),
        TaskSpec("winogrande", 5, "acc"),
        TaskSpec("gsm8k", 5, "exact_match"),
        TaskSpec("drop", 3, "f1"),
    ),
}


def suite(name: str) -> list[TaskSpec]:
    """The preset `name` (see SUITES)."""
    if name not in SUITES:
        raise ConfigError(f"unknown suite {name!r}: choose one of {', '.join(SUITES)}")
    return list(SUITES[name])
