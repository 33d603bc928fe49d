"""`python -m trainer.generate` on a run folder written with `save_params` and on one imported with convert_from_hf:
streamed text equals the JSON result, per-prompt random streams don't depend on batching, a stop string of several
tokens ends the text before it, `--chat` goes through the chat template, and bad input is one line with exit 2."""

import io
import json
import os
import subprocess
import sys

import pytest
from hf_models import random_params
from sp_tokenizers import TEMPLATE, sentencepiece

from trainer import checkpoint
from trainer.config import Config, ModelConfig
from trainer.data.bos import record_bos
from trainer.export import command as convert_to_hf
from trainer.export import import_hf
from trainer.infer.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = ModelConfig(
    vocab_size=512,
    embed_dim=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    mlp_dim=128,
    max_seq_len=128,
    compute_dtype="float32",
    remat_policy="none",
    tie_embeddings=False,
)
PROMPT = "def main():\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as training leaves it (config, step-3 params, tokenizer/ with a chat template)."""
    run = str(tmp_path_factory.mktemp("gen") / "run")
    checkpoint.save_params(run, Config(model=MODEL), random_params(MODEL, seed=4), step=3)
    record_bos(run, False, source="data without --bos")  # as training records it
    sentencepiece().save(os.path.join(run, "tokenizer"))
    with open(os.path.join(run, "tokenizer", "chat_template.jinja"), "w") as f:
        f.write(TEMPLATE + "<|assistant|>")
    return run


def generate(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def json_rows(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_a_prompt_streams_the_text_its_json_result_holds(run_dir, capsys):
    code, streamed, err = generate(capsys, "--checkpoint", run_dir, "--prompt", PROMPT, "--max-new-tokens", "24")
    assert code == 0, err
    assert "tokens/s" in err.strip().splitlines()[-1] and "step 3" in err
    code, out, _ = generate(
        capsys, "--checkpoint", f"{run_dir}:3", "--prompt", PROMPT, "--max-new-tokens", "24", "--output", "json"
    )
    (row,) = json_rows(out)
    assert set(row) == {"prompt", "text", "tokens", "logprobs", "finish_reason"}
    assert streamed == PROMPT + row["text"] + "\n"
    assert len(row["tokens"]) == len(row["logprobs"]) <= 24 and row["finish_reason"] in ("stop", "length")
    assert row["text"] == sentencepiece().decode([t for t in row["tokens"] if t != sentencepiece().eos_id])


def test_sampled_prompts_do_not_depend_on_the_batch_they_are_in(run_dir, capsys, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(p) for p in [{"prompt": "import os\n"}, "class A:", {"prompt": "x = "}]))
    common = [
        "--checkpoint",
        run_dir,
        "--prompts",
        str(prompts),
        "--output",
        "json",
        "--max-new-tokens",
        "12",
        "--temperature",
        "0.9",
        "--top-k",
        "40",
        "--seed",
        "7",
    ]
    _, together, _ = generate(capsys, *common, "--batch-size", "3")
    _, one_by_one, _ = generate(capsys, *common, "--batch-size", "1")
    _, other_seed, _ = generate(capsys, *common[:-1], "8", "--batch-size", "3")
    assert [r["prompt"] for r in json_rows(together)] == ["import os\n", "class A:", "x = "]
    for a, b in zip(json_rows(together), json_rows(one_by_one), strict=True):
        assert (a["tokens"], a["text"], a["finish_reason"]) == (b["tokens"], b["text"], b["finish_reason"])
        assert a["logprobs"] == pytest.approx(b["logprobs"], abs=1e-5)
    assert [r["tokens"] for r in json_rows(together)] != [r["tokens"] for r in json_rows(other_seed)]


def test_a_stop_string_of_several_tokens_ends_the_text_before_it(run_dir, capsys):
    _, out, _ = generate(
        capsys,
        "--checkpoint",
        run_dir,
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "40",
        "--output",
        "json",
        "--ignore-eos",
    )
    full = json_rows(out)[0]
    text = full["text"]
    stop = next(text[i : i + 5] for i in range(4, len(text) - 5) if len(sentencepiece().encode(text[i : i + 5])) >= 2)
    _, out, _ = generate(
        capsys,
        "--checkpoint",
        run_dir,
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "40",
        "--output",
        "json",
        "--ignore-eos",
        "--stop",
        "NEVER-THERE",
        "--stop",
        stop,
    )
    cut = json_rows(out)[0]
    assert cut["finish_reason"] == "stop" and cut["text"] == text[: text.find(stop)]
    assert stop not in cut["text"]
    assert cut["tokens"] == full["tokens"][: len(cut["tokens"])] and len(cut["tokens"]) < len(full["tokens"])
    through = sentencepiece().decode(cut["tokens"])
    assert through.startswith(text[: text.find(stop)] + stop[:1]) and stop in through  # ends within the stop string


def test_chat_on_a_model_imported_from_hugging_face(run_dir, capsys, tmp_path, monkeypatch):
    hf_dir, imported = str(tmp_path / "hf"), str(tmp_path / "imported")
    assert convert_to_hf.main(["--checkpoint", run_dir, "--out", hf_dir, "--no-verify"]) == 0
    assert import_hf.main(["--hf", hf_dir, "--out", imported, "--no-verify"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\nhow are you?\n"))
    code, out, err = generate(capsys, "--checkpoint", imported, "--chat", "--output", "json", "--max-new-tokens", "8")
    assert code == 0, err
    turns = json_rows(out)
    assert [t["prompt"] for t in turns] == ["hello", "how are you?"]
    assert all(len(t["tokens"]) <= 8 for t in turns)
    code, out, err = generate(capsys, "--checkpoint", imported, "--prompt", "x", "--max-new-tokens", "4")
    assert code == 0 and out.startswith("x")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint", "/nonexistent/run", "--prompt", "x"], "/nonexistent/run"),
        (["--prompt", "x", "--top-k", "5"], "temperature"),
        (["--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["--prompt", " ".join(map(str, range(100)))], "leaves no room"),
        (["--prompts", "/nonexistent.jsonl"], "no such file"),
        (["--chat"], "chat template"),  # the run's SentencePiece tokenizer has none
    ],
)
def test_bad_input_is_one_line_and_exit_2(run_dir, capsys, args, message):
    if "--checkpoint" not in args:
        args = ["--checkpoint", run_dir, *args]
    code, out, err = generate(capsys, *args)
    assert code == 2 and err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1


def test_the_command_runs_as_a_module(run_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\nnot json\n')
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    result = subprocess.run(
        [sys.executable, "-m", "trainer.generate", "--checkpoint", run_dir, "--prompts", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2 and result.stderr.strip() == f"error: {bad}:2 is not JSON (Expecting value)"
