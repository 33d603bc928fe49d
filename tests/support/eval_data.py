"""Small synthetic task files in the exact Hugging Face schemas of the splits lm-evaluation-harness scores, for the
8 zero-shot tasks (a few documents each, some longer than a tiny model's context to exercise left truncation)."""

from __future__ import annotations

import json
import os

WORDS = [
    "the",
    "river",
    "stone",
    "light",
    "garden",
    "morning",
    "people",
    "city",
    "small",
    "house",
    "water",
    "old",
    "never",
    "always",
    "quickly",
    "quietly",
    "bright",
    "window",
    "mountain",
    "cold",
    "open",
    "letter",
    "friend",
    "table",
    "simple",
    "green",
    "road",
    "winter",
    "summer",
    "heavy",
    "story",
]


def sentence(seed: int, words: int) -> str:
    """A deterministic pseudo-English sentence."""
    picked = [WORDS[(seed * 7 + i * (seed % 5 + 3)) % len(WORDS)] for i in range(words)]
    return " ".join(picked).capitalize() + "."


def hellaswag(n: int) -> list[dict]:
    return [
        {
            "ind": i,
            "activity_label": "Cooking" if i % 2 else "Walking the dog",
            "ctx_a": sentence(i, 8),
            "ctx_b": "then the person",
            "ctx": sentence(i, 8) + " then the person",
            "endings": [sentence(i + k, 4 + k) + (" [title] more" if k == 1 else "") for k in range(4)],
            "source_id": f"src-{i}",
            "split": "val",
            "split_type": "indomain",
            "label": str(i % 4),
        }
        for i in range(n)
    ]


def arc(n: int, prefix: str) -> list[dict]:
    rows = []
    for i in range(n):
        labels = ["A", "B", "C", "D"] if i % 3 else ["1", "2", "3", "4"]
        rows.append(
            {
                "id": f"{prefix}-{i}",
                "question": sentence(i + 40, 9)[:-1] + "?",
                "choices": {"text": [sentence(i + k, 2 + k) for k in range(4)], "label": labels},
                "answerKey": labels[i % 4],
            }
        )
    return rows


def winogrande(n: int) -> list[dict]:
    return [
        {
            "sentence": f"{sentence(i, 5)[:-1]} because _ {sentence(i + 3, 4).lower()}",
            "option1": WORDS[i % len(WORDS)],
            "option2": WORDS[(i + 5) % len(WORDS)],
            "answer": str(i % 2 + 1),
        }
        for i in range(n)
    ]


def piqa(n: int) -> list[dict]:
    return [
        {"goal": sentence(i + 9, 6), "sol1": sentence(i + 1, 5), "sol2": sentence(i + 2, 7), "label": i % 2}
        for i in range(n)
    ]


def boolq(n: int) -> list[dict]:
    # passages up to ~80 words: longer than a 64-token context, so the harness truncates them from the left
    return [
        {
            "question": sentence(i + 11, 6)[:-1].lower(),
            "passage": " ".join(sentence(i + k, 8) for k in range(1 + 3 * (i % 4))),
            "idx": i,
            "label": i % 2,
        }
        for i in range(n)
    ]


def openbookqa(n: int) -> list[dict]:
    return [
        {
            "id": f"obqa-{i}",
            "question_stem": sentence(i + 21, 7)[:-1].lower(),
            "choices": {"text": [sentence(i + k, 3) for k in range(4)], "label": ["A", "B", "C", "D"]},
            "answerKey": "ABCD"[i % 4],
        }
        for i in range(n)
    ]


def lambada(n: int) -> list[dict]:
    return [{"text": sentence(i + 31, 6 + 2 * i)[:-1]} for i in range(n)]


def write_task_files(folder: str, n: int = 6, extra_lambada: list[str] = ()) -> dict[str, int]:
    """One .jsonl per task (openbookqa as .json, piqa as .parquet when pyarrow is present); documents per task."""
    tables = {
        "hellaswag": hellaswag(n),
        "arc_easy": arc(n, "easy"),
        "arc_challenge": arc(n, "challenge"),
        "winogrande": winogrande(n),
        "piqa": piqa(n),
        "boolq": boolq(n),
        "openbookqa": openbookqa(n),
        "lambada_openai": lambada(n) + [{"text": t} for t in extra_lambada],
    }
    os.makedirs(folder, exist_ok=True)
    for task, rows in tables.items():
        if task == "openbookqa":
            with open(os.path.join(folder, f"{task}.json"), "w") as f:
                json.dump(rows, f)
        else:
            with open(os.path.join(folder, f"{task}.jsonl"), "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
    return {task: len(rows) for task, rows in tables.items()}
