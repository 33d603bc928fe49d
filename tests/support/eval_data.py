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


MMLU_SUBJECTS = ("anatomy", "astronomy", "philosophy")  # stem, stem, humanities: two categories, three subtasks


def mmlu(subject: str, n: int, offset: int = 0) -> list[dict]:
    """Rows of cais/mmlu's schema (the `all` config's, with `subject`)."""
    return [
        {
            "question": sentence(i + offset + 50, 7)[:-1] + "?",
            "subject": subject,
            "choices": [sentence(i + offset + k, 2 + k) for k in range(4)],
            "answer": (i + offset) % 4,
        }
        for i in range(n)
    ]


def gsm8k(n: int, offset: int = 0) -> list[dict]:
    """Rows of openai/gsm8k's `main` config: a question and a worked answer ending in `#### N`."""
    rows = []
    for i in range(n):
        a, b = 3 + i + offset, 4 + 2 * (i + offset)
        rows.append(
            {
                "question": f"{sentence(i + offset, 6)[:-1]} has {a} stones and finds {b} more. How many now?",
                "answer": f"It has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} stones.\n#### {a + b}",
            }
        )
    return rows


HUMANEVAL = [
    ("add", "a, b", "Return the sum of a and b.", "return a + b", "assert candidate(2, 3) == 5"),
    ("double", "x", "Return twice x.", "return 2 * x", "assert candidate(4) == 8"),
    ("last", "items", "Return the last item.", "return items[-1]", "assert candidate([1, 2, 3]) == 3"),
]


def humaneval() -> list[dict]:
    """Rows of openai/openai_humaneval's schema."""
    return [
        {
            "task_id": f"HumanEval/{i}",
            "prompt": f'def {name}({args}):\n    """{doc}"""\n',
            "canonical_solution": f"    {body}\n",
            "test": f"\n\ndef check(candidate):\n    {test}\n",
            "entry_point": name,
        }
        for i, (name, args, doc, body, test) in enumerate(HUMANEVAL)
    ]


def mbpp() -> list[dict]:
    """Rows of google-research-datasets/mbpp's `full` config (its test split)."""
    return [
        {
            "task_id": 11 + i,
            "text": f"Write a function {name} to {doc[0].lower() + doc[1:-1]}.",
            "code": f"def {name}({args}):\n    {body}",
            "test_list": [test.replace("candidate", name)] * 3,
            "test_setup_code": "",
            "challenge_test_list": [],
        }
        for i, (name, args, doc, body, test) in enumerate(HUMANEVAL)
    ]


def write_jsonl(path: str, rows: list[dict]) -> None:
    """One JSON object per line."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def write_fewshot_files(folder: str, n: int = 4) -> None:
    """Task files with their few-shot splits: ARC-Easy test + train, MMLU (3 subjects: a folder per group, test +
    dev), GSM8K test + train, HumanEval and MBPP test."""
    write_jsonl(os.path.join(folder, "arc_easy.test.jsonl"), arc(n, "easy"))
    write_jsonl(os.path.join(folder, "arc_easy.train.jsonl"), arc(8, "train"))
    for k, subject in enumerate(MMLU_SUBJECTS):
        write_jsonl(os.path.join(folder, "mmlu", f"{subject}.test.jsonl"), mmlu(subject, n + k, 10 * k))
        write_jsonl(os.path.join(folder, "mmlu", f"{subject}.dev.jsonl"), mmlu(subject, 5, 100 + 10 * k))
    write_jsonl(os.path.join(folder, "gsm8k.test.jsonl"), gsm8k(n))
    write_jsonl(os.path.join(folder, "gsm8k.train.jsonl"), gsm8k(8, 100))
    write_jsonl(os.path.join(folder, "humaneval.jsonl"), humaneval())
    write_jsonl(os.path.join(folder, "mbpp.test.jsonl"), mbpp())


def truthfulqa_mc(n: int) -> list[dict]:
    """Rows of truthfulqa/truthful_qa's `multiple_choice` config."""
    rows = []
    for i in range(n):
        choices = [sentence(i + k, 3 + k) for k in range(4)]
        rows.append(
            {
                "question": sentence(i + 60, 6)[:-1] + "?",
                "mc1_targets": {"choices": choices, "labels": [1, 0, 0, 0]},
                "mc2_targets": {"choices": choices, "labels": [1, 1, 0, 0]},
            }
        )
    return rows


def drop(n: int, offset: int = 0) -> list[dict]:
    """Rows of EleutherAI/drop's schema: a passage, a question, the answer and the validated answers."""
    empty_date = {"day": "", "month": "", "year": ""}
    rows = []
    for i in range(n):
        number = str(3 + i + offset)
        rows.append(
            {
                "section_id": f"s{i + offset}",
                "query_id": f"q{i + offset}",
                "passage": " ".join(sentence(i + offset + k, 8) for k in range(3)) + f" It had {number} rooms.",
                "question": "How many rooms did it have?",
                "answer": {"number": number, "date": empty_date, "spans": []},
                "validated_answers": {"number": [number], "date": [empty_date], "spans": [[]]},
            }
        )
    return rows


def write_leaderboard_files(folder: str, n: int = 3) -> None:
    """Every split the Open LLM Leaderboard v1 suite reads (scored and few-shot), plus the few-shot files."""
    write_fewshot_files(folder, n)
    write_jsonl(os.path.join(folder, "arc_challenge.test.jsonl"), arc(n, "challenge"))
    write_jsonl(os.path.join(folder, "arc_challenge.train.jsonl"), arc(30, "train"))
    write_jsonl(os.path.join(folder, "hellaswag.validation.jsonl"), hellaswag(n))
    write_jsonl(os.path.join(folder, "hellaswag.train.jsonl"), hellaswag(12))
    write_jsonl(os.path.join(folder, "winogrande.validation.jsonl"), winogrande(n))
    write_jsonl(os.path.join(folder, "winogrande.train.jsonl"), winogrande(8))
    write_jsonl(os.path.join(folder, "truthfulqa_mc2.validation.jsonl"), truthfulqa_mc(n))
    write_jsonl(os.path.join(folder, "drop.validation.jsonl"), drop(n))
    write_jsonl(os.path.join(folder, "drop.train.jsonl"), drop(6, 100))
