"""Few-shot, groups, generation and code tasks against the harness's reference backend: `lm_eval`'s `hf` model on the
Hugging Face export of the same checkpoint (float32), local task files in the real schemas, one harness run each.

- ARC-Easy 5-shot: identical few-shot contexts, per-request log-likelihoods within 1e-4, identical acc / acc_norm;
- an MMLU-schema group of 3 subtasks (2 categories), 2-shot: identical subtask, category and group accuracies;
- GSM8K 2-shot (generate_until on our KV-cache generator): identical greedy outputs and exact_match;
- HumanEval (0-shot) and MBPP (3-shot, the harness's fixed examples): identical generations, the programs run.
"""

import json
import os
import shutil

import pytest

pytest.importorskip("lm_eval", reason="the eval extra (lm-eval) is not installed")

from bpe_tokenizers import starcoder_style
from eval_data import MMLU_SUBJECTS, write_fewshot_files
from hf_models import random_params

from trainer import checkpoint
from trainer.config import Config, DataConfig, ModelConfig
from trainer.errors import ConfigError
from trainer.eval import tasks
from trainer.eval.harness import TrainerLM
from trainer.export import command as convert_to_hf

TOLERANCE = 1e-4
MODEL = ModelConfig(
    vocab_size=512,
    embed_dim=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    mlp_dim=128,
    max_seq_len=256,
    compute_dtype="float32",
    remat_policy="none",
    tie_embeddings=False,
)
SPECS = ["arc_easy:5", "mmlu:2", "gsm8k:2", "humaneval", "mbpp:3"]
GEN_KWARGS = "max_gen_toks=24"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A run with a StarCoder-style byte-level BPE (no BOS), its float32 HF export and the task files."""
    root = str(tmp_path_factory.mktemp("fewshot"))
    data, run, hf, task_dir = (os.path.join(root, n) for n in ("data", "run", "hf", "tasks"))
    os.makedirs(data)
    with open(os.path.join(data, "manifest.json"), "w") as f:
        json.dump({"bos": False}, f)
    checkpoint.save_params(run, Config(model=MODEL, data=DataConfig(path=data)), random_params(MODEL), step=3)
    shutil.copytree(starcoder_style(os.path.join(root, "tok")), os.path.join(run, "tokenizer"))
    assert convert_to_hf.main(["--checkpoint", run, "--out", hf, "--dtype", "float32", "--no-verify"]) == 0
    write_fewshot_files(task_dir)
    return {"run": run, "hf": hf, "tasks": task_dir}


@pytest.fixture(scope="module")
def results(setup):
    from lm_eval.models.huggingface import HFLM

    def run(lm):
        return tasks.evaluate(
            lm,
            SPECS,
            setup["tasks"],
            bootstrap_iters=0,
            log_samples=True,
            allow_code_execution=True,
            gen_kwargs=GEN_KWARGS,
        )

    ours = run(TrainerLM(checkpoint=setup["run"], batch_size=8))
    theirs = run(HFLM(pretrained=setup["hf"], dtype="float32", device="cpu", batch_size=8))
    return ours, theirs


def test_five_shot_contexts_loglikelihoods_and_scores_match(results):
    ours, theirs = results
    assert ours["n-shot"]["arc_easy"] == 5
    docs_a, docs_b = ours["samples"]["arc_easy"], theirs["samples"]["arc_easy"]
    assert len(docs_a) == len(docs_b) == 4
    for a, b in zip(docs_a, docs_b):
        assert a["arguments"] == b["arguments"]  # the same 5 examples, drawn by the harness's sampler and seed
        assert a["arguments"][0][0].count("Question:") == 6
        for ra, rb in zip(a["resps"], b["resps"]):
            assert abs(ra[0][0] - rb[0][0]) <= TOLERANCE and ra[0][1] == rb[0][1]
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["arc_easy"][metric] == theirs["results"]["arc_easy"][metric]


def test_mmlu_group_aggregates_as_the_harness_does(results):
    ours, theirs = results
    names = {"mmlu", "mmlu_stem", "mmlu_humanities"} | {f"mmlu_{s}" for s in MMLU_SUBJECTS}
    assert names <= set(ours["results"]) and "mmlu_other" not in ours["results"]
    for name in names:
        assert ours["results"][name]["acc,none"] == theirs["results"][name]["acc,none"], name
    sizes = {s: ours["n-samples"][f"mmlu_{s}"]["effective"] for s in MMLU_SUBJECTS}
    weighted = sum(ours["results"][f"mmlu_{s}"]["acc,none"] * n for s, n in sizes.items()) / sum(sizes.values())
    assert ours["results"]["mmlu"]["acc,none"] == pytest.approx(weighted)
    context = ours["samples"]["mmlu_anatomy"][0]["arguments"][0][0]
    assert context.startswith("The following are multiple choice questions (with answers) about anatomy.")
    assert context.count("\nAnswer:") == 3  # 2 examples from the dev split, then the question


def test_generation_matches_the_hf_backend(results):
    ours, theirs = results
    for task in ("gsm8k", "humaneval", "mbpp"):
        a = [d["resps"] for d in ours["samples"][task]]
        b = [d["resps"] for d in theirs["samples"][task]]
        assert a == b, task
        assert any(r[0][0].strip() for r in a), task  # something was generated
    for metric in ("exact_match,strict-match", "exact_match,flexible-extract"):
        assert ours["results"]["gsm8k"][metric] == theirs["results"]["gsm8k"][metric]
    assert ours["n-shot"]["gsm8k"] == 2 and ours["samples"]["gsm8k"][0]["arguments"][0][0].count("Question:") == 3
    assert ours["n-shot"]["mbpp"] == 3 and "[BEGIN]" in ours["samples"]["mbpp"][0]["arguments"][0][0]


def test_code_tasks_run_the_programs(results):
    ours, _ = results
    humaneval = ours["results"]["humaneval"]
    assert "pass@1,create_test" in humaneval and 0.0 <= humaneval["pass@1,create_test"] <= 1.0
    assert 0.0 <= ours["results"]["mbpp"]["pass_at_1,none"] <= 1.0


def test_code_tasks_need_the_opt_in_and_few_shot_its_split(setup):
    with pytest.raises(ConfigError, match="--allow-code-execution"):
        tasks.evaluate(None, ["humaneval"], setup["tasks"])
    with pytest.raises(ConfigError, match=r"arc_challenge\.train\.jsonl"):
        shutil.copy(
            os.path.join(setup["tasks"], "arc_easy.test.jsonl"), os.path.join(setup["tasks"], "arc_challenge.jsonl")
        )
        tasks.check_tasks(["arc_challenge:25"], setup["tasks"])
    assert [str(s) for s in tasks.check_tasks(["arc_challenge:0", "mmlu:2"], setup["tasks"])] == [
        "arc_challenge:0",
        "mmlu:2",
    ]


def chat_lm(run: str, end_of_turn: str) -> TrainerLM:
    """Our model with a chat format whose turns end with the plain-text marker `end_of_turn`."""
    from trainer.data import chat

    jinja = (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '\\n' }}"
        "{% if m['role'] == 'assistant' %}{{ '" + end_of_turn + "' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    )
    lm = TrainerLM(checkpoint=run, batch_size=8)
    lm.tok.chat = chat.chat_config(chat.resolve_template(jinja, end_of_turn, markers="text"), lm.tok)
    return lm


def test_a_chat_model_is_prompted_through_its_template_and_stops_at_its_end_of_turn(setup):
    def answers(lm, shots):
        out = tasks.evaluate(
            lm,
            [f"gsm8k:{shots}"],
            setup["tasks"],
            limit=3,
            bootstrap_iters=0,
            log_samples=True,
            apply_chat_template=True,
            fewshot_as_multiturn=shots > 0,
            gen_kwargs=GEN_KWARGS,
        )
        docs = out["samples"]["gsm8k"]
        return [d["arguments"][0][0] for d in docs], [d["resps"][0][0] for d in docs]

    contexts, _ = answers(chat_lm(setup["run"], "<|never|>"), shots=1)
    for context in contexts:  # the example as a user turn and an assistant turn, then the question
        assert context.startswith("<|user|>\nQuestion: ") and context.endswith("\nAnswer:\n<|assistant|>\n")
        assert context.count("<|user|>") == 2 and "\n<|never|><|user|>" in context
    _, free = answers(chat_lm(setup["run"], "<|never|>"), shots=0)
    # a marker the model writes (so the end of turn is reached before max_gen_toks) that is plain text: a stop string
    lm = chat_lm(setup["run"], "<|never|>")
    marker = next(t[i : i + 3] for t in free for i in range(1, len(t) - 3) if len(lm.tok.encode(t[i : i + 3])) > 1)
    _, cut = answers(chat_lm(setup["run"], marker), shots=0)
    assert cut == [t.split(marker)[0] for t in free] and cut != free


def test_the_lm_eval_command_files_its_results_in_the_run(setup, tmp_path):
    """`python -m trainer.eval.lm_eval_cli --model trainer ...`: the harness's own CLI, results in RUN/eval/."""
    import subprocess
    import sys

    from runs import REPO, trainer_env

    tasks.write_include_path(tmp_path, ["arc_easy:1"], setup["tasks"])
    command = [sys.executable, "-m", "trainer.eval.lm_eval_cli", "--model", "trainer"]
    command += ["--model_args", f"checkpoint={setup['run']}", "--batch_size", "8", "--tasks", "arc_easy"]
    command += ["--include_path", str(tmp_path), "--limit", "2"]
    env = {**trainer_env(), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(setup["run"], "eval", "step_3.json")) as f:
        saved = json.load(f)
    assert saved["n-shot"]["arc_easy"] == 1 and "acc_norm,none" in saved["results"]["arc_easy"]
    assert saved["config"]["step"] == 3


def test_a_task_that_samples_is_sampled_reproducibly(setup):
    """`do_sample` with a temperature (HumanEval's pass@k tasks): sampled on the generator, the same on a rerun."""
    from lm_eval.api.instance import Instance

    lm = TrainerLM(checkpoint=setup["run"], batch_size=8)

    def run(**settings):
        kwargs = {"until": ["\n\n"], "max_gen_toks": 12, **settings}
        return lm.generate_until([Instance("generate_until", {}, ("def f(x):", dict(kwargs)), i) for i in range(4)])

    greedy, sampled = run(), run(do_sample=True, temperature=1.0, top_p=0.95)
    assert len(set(greedy)) == 1  # four copies of one prompt
    assert sampled == run(do_sample=True, temperature=1.0, top_p=0.95) and len(set(sampled)) > 1


def test_the_leaderboard_v1_suite_runs_from_local_files(setup, tmp_path, capsys):
    """`--suite leaderboard-v1`: every task at its shots from its local splits, the card's table printed."""
    from eval_data import write_leaderboard_files

    from trainer.eval.__main__ import main

    write_leaderboard_files(str(tmp_path))
    args = ["--checkpoint", setup["run"], "--data-dir", str(tmp_path), "--suite", "leaderboard-v1", "--limit", "2"]
    assert main([*args, "--gen-kwargs", "max_gen_toks=8", "--bootstrap-iters", "0", "--markdown"]) == 0
    out = capsys.readouterr().out
    for row in ("| ARC-Challenge | 25 | acc_norm |", "| HellaSwag | 10 | acc_norm |", "| MMLU | 5 | acc |"):
        assert row in out, out
    for row in ("| TruthfulQA (mc2) | 0 | acc |", "| WinoGrande | 5 | acc |", "| DROP | 3 | f1 |"):
        assert row in out, out
    assert "| GSM8K | 5 | exact_match (strict-match) |" in out
