"""`--format mlx|onnx` of `python -m trainer.convert_to_hf`, proven in their own runtimes, and the model card.

MLX: mlx-lm loads the folder (tokenizer included) and its own generation loop gives our 32 greedy tokens; the 8-bit
export loads and generates. ONNX: onnxruntime's logits equal ours (fp32 and fp16 tolerances) and a 16-token greedy
decode through the graph's KV cache equals ours. Each runtime's tests skip only when its package is absent.
The model has θ = 500000: a reader that ignores the exported θ (mlx-lm reads only the top-level `rope_theta`) fails.
"""

import json
import os
import sys

import jax
import numpy as np
import pytest
from hf_models import greedy_ours, random_params
from runs import keep_tokenizer, prepare_corpus
from sp_tokenizers import TEMPLATE

from trainer import checkpoint
from trainer.config import Config, DataConfig, ModelConfig
from trainer.export import command as convert_to_hf
from trainer.run.metrics import plot_losses

MODEL = ModelConfig(
    vocab_size=512,
    embed_dim=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    mlp_dim=128,
    max_seq_len=64,
    rope_theta=500000.0,
    compute_dtype="float32",
    remat_policy="none",
    tie_embeddings=False,
)
STEP = 40
PROMPT = [5, 17, 42, 99]
EVAL_RESULTS = {
    "results": {
        "arc_easy": {
            "acc,none": 0.3125,
            "acc_stderr,none": 0.01,
            "acc_norm,none": 0.375,
            "acc_norm_stderr,none": 0.02,
            "alias": "arc_easy",
        }
    }
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as training leaves it (config, checkpoint, metrics.jsonl, loss.png, lm-eval results) over a real
    prepared data folder (its manifest: no BOS per document; its tokenizer, with a chat template beside it)."""
    root = tmp_path_factory.mktemp("formats")
    data = prepare_corpus(str(root / "data"))
    with open(os.path.join(data, "chat_template.jinja"), "w") as f:
        f.write(TEMPLATE)
    run = str(root / "run")
    config = Config(model=MODEL, data=DataConfig(path=data))
    checkpoint.save_params(run, config, random_params(MODEL), step=STEP)
    keep_tokenizer(data, run)
    rows = [
        {
            "step": s,
            "loss": 6.0 - 0.05 * s,
            "learning_rate": 1e-3,
            "grad_norm": 1.0,
            "skipped_steps": 0,
            "tokens_per_s": 1000.0 + s,
            "tflops_per_device": 0.01,
            "mfu": 0.25,
            "hardware": "8 × cpu",
        }
        for s in range(1, STEP + 1)
    ]
    rows += [
        {"step": 20, "eval_loss": 5.5, "eval_perplexity": float(np.exp(5.5))},
        {"step": STEP, "eval_loss": 5.0, "eval_perplexity": float(np.exp(5.0))},
    ]
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    plot_losses(rows, os.path.join(run, "loss.png"))
    os.makedirs(os.path.join(run, "eval"))
    with open(os.path.join(run, "eval", "step_30.json"), "w") as f:  # as trainer.eval writes them
        json.dump(EVAL_RESULTS, f)
    with open(os.path.join(run, "eval", f"step_{STEP + 10}.json"), "w") as f:  # a later step: not this export's
        json.dump({"results": {"arc_easy": {"acc,none": 0.9}}}, f)
    return run


@pytest.fixture(scope="module")
def ours():
    """Our 32 greedy tokens after PROMPT (full re-forward per token, fp32) with the checkpoint's params."""
    return greedy_ours(MODEL, random_params(MODEL), np.array(PROMPT), 32)


def export(run_dir, out, *options, capsys=None):
    assert convert_to_hf.main(["--checkpoint", run_dir, "--out", str(out), *options]) == 0
    return capsys.readouterr().out if capsys is not None else ""


# ---------------------------------------------------------------------------------------------- MLX


def test_mlx_export_loads_in_mlx_lm_and_generates_our_greedy_tokens(run_dir, ours, tmp_path, capsys):
    pytest.importorskip("mlx_lm", reason="the mlx extra is not installed")
    import mlx_lm

    from trainer.export import mlx

    out = tmp_path / "mlx"
    printed = export(run_dir, out, "--format", "mlx", capsys=capsys)
    assert "parity ok" in printed  # mlx-lm's logits on the stored weights within 1e-4 × scale of ours
    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == 500000.0 and config["tie_word_embeddings"] is False
    model, tokenizer = mlx_lm.load(str(out))  # the folder mlx-lm loads, tokenizer included
    assert tokenizer.encode("def f():", add_special_tokens=False) == tokenizer._tokenizer.encode(
        "def f():", add_special_tokens=False
    )
    assert mlx.greedy(model, PROMPT, 32) == ours  # mlx-lm's own loop, float32 weights


def test_mlx_8bit_export_loads_and_generates(run_dir, ours, tmp_path, capsys):
    pytest.importorskip("mlx_lm", reason="the mlx extra is not installed")
    import mlx_lm

    from trainer.export import mlx

    out = tmp_path / "mlx8"
    printed = export(run_dir, out, "--format", "mlx", "--mlx-bits", "8", capsys=capsys)
    assert "parity ok" in printed and "quantising the weights to 8 bits" in printed  # mlx-lm = ours, dequantised
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 8, "mode": "affine"}
    model, tokenizer = mlx_lm.load(str(out))
    text = mlx_lm.generate(model, tokenizer, prompt="def main():", max_tokens=8)
    assert isinstance(text, str) and text
    tokens = mlx.greedy(model, PROMPT, 32)
    print(f"8-bit greedy tokens equal to ours: {sum(a == b for a, b in zip(tokens, ours))}/32")
    assert tokens[:4] == ours[:4]


# ---------------------------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_onnx_export_runs_in_onnxruntime_with_a_kv_cache(dtype, run_dir, ours, tmp_path, capsys):
    onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from trainer.export import onnx as onnx_export

    out = tmp_path / f"onnx-{dtype}"
    printed = export(run_dir, out, "--format", "onnx", "--dtype", dtype, capsys=capsys)
    assert "parity ok" in printed  # fp32: within 1e-4 × scale; fp16: within 1e-2 × scale
    assert {"model.onnx", "model.onnx_data", "config.json", "tokenizer.json", "README.md"} <= set(os.listdir(out))
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False)
    inputs, outputs = onnx_export.io_names(MODEL)
    assert [i.name for i in graph.graph.input] == inputs and [o.name for o in graph.graph.output] == outputs
    weight_types = {t.data_type for t in graph.graph.initializer if len(t.dims) == 2}
    assert weight_types == {onnx.TensorProto.FLOAT if dtype == "float32" else onnx.TensorProto.FLOAT16}

    session = onnx_export.session(str(out))
    tokens = onnx_export.greedy(session, PROMPT, 16)  # the prompt once, then one token per call through the cache
    if dtype == "float32":
        assert tokens == ours[:16]
    else:
        print(f"float16 greedy tokens equal to ours: {sum(a == b for a, b in zip(tokens, ours))}/16")
        assert tokens[:4] == ours[:4]
    # the cache is exact: the last position's logits from a cached call equal a full forward's
    full, _ = onnx_export.run(session, np.array([PROMPT + tokens]))
    _, past = onnx_export.run(session, np.array([PROMPT + tokens[:-1]]))
    step, _ = onnx_export.run(session, np.array([tokens[-1:]]), past, len(PROMPT) + 15)
    np.testing.assert_allclose(step[0, -1], full[0, -1], atol=1e-4 * np.abs(full).max())


# ---------------------------------------------------------------------------------------------- the card


def test_every_export_writes_a_model_card_of_the_run(run_dir, tmp_path, capsys):
    from huggingface_hub import ModelCard

    out = tmp_path / "hf"
    export(run_dir, out, "--dtype", "bfloat16", "--license", "mit", capsys=capsys)
    text = (out / "README.md").read_text()
    card = ModelCard(text)  # the Hub's own parser: YAML header + Markdown
    meta = card.data.to_dict()
    assert meta["license"] == "mit" and meta["language"] == ["en"] and meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "text-generation" and "llama" in meta["tags"]
    assert meta["datasets"] == ["python-stdlib"]  # from the data manifest's source
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(random_params(MODEL)))
    tokens = STEP * Config().train.global_batch_size * Config().train.seq_len
    assert f"| parameters | {n:,} |" in text
    assert f"| tokens seen | {tokens:,} " in text
    assert f"| Chinchilla ratio | {tokens / (20 * n):.3g} " in text
    assert "| hardware | 8 × cpu |" in text and "| MFU | 25.0 % (median) |" in text
    assert "| final validation loss | 5.0000 (perplexity 148.41) |" in text
    assert "(measured at step 30)" in text and "| ARC-Easy | 31.25 ± 1.00 | 37.50 ± 2.00 | – |" in text
    assert "![training and validation loss](loss.png)" in text and (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert TEMPLATE in text and "`</s>` (id 3)" in text and "Prompts get no BOS" in text
    assert "parity ok" in text and "AutoModelForCausalLM.from_pretrained" in text
    facts = text.replace(TEMPLATE, "").split("## Usage")[0]
    for placeholder in ("None", "TODO", "[More Information Needed]", "{", "nan"):
        assert placeholder not in facts, placeholder


def test_the_onnx_cards_usage_snippet_runs(run_dir, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    out = tmp_path / "model"
    export(run_dir, out, "--format", "onnx", "--no-verify", capsys=capsys)
    snippet = (out / "README.md").read_text().split("```python\n")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)  # the snippet names the folder as a user beside it would
    exec(compile(snippet, "README.md", "exec"), {})  # noqa: S102  (in this process: imports already paid for)
    assert capsys.readouterr().out.startswith("def fibonacci(n):")


def test_format_options_that_do_not_fit_fail_in_one_line(run_dir, tmp_path, capsys):
    for argv, message in (
        (["--mlx-bits", "8"], "--mlx-bits applies to --format mlx only"),
        (["--format", "onnx", "--dtype", "bfloat16"], "not available for --format onnx"),
        (["--format", "gguf", "--dtype", "float16"], "--gguf-type"),
    ):
        code = convert_to_hf.main(["--checkpoint", run_dir, "--out", str(tmp_path / "x"), *argv])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "fmt, modules, extra", [("mlx", ("mlx_lm", "mlx_lm.utils", "mlx.core"), "mlx"), ("onnx", ("onnxruntime",), "onnx")]
)
def test_a_format_without_its_runtime_names_the_extra(fmt, modules, extra, run_dir, tmp_path, capsys, monkeypatch):
    for module in modules:  # None in sys.modules makes the import fail as it does where the package is absent
        monkeypatch.setitem(sys.modules, module, None)
    assert convert_to_hf.main(["--checkpoint", run_dir, "--out", str(tmp_path / "x"), "--format", fmt]) == 2
    err = capsys.readouterr().err
    assert f'pip install -e ".[{extra}]"' in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def test_a_16_bit_export_without_the_check_restores_each_tensor_in_its_dtype(run_dir, monkeypatch):
    import ml_dtypes

    monkeypatch.setattr(checkpoint, "CAST_BATCH_BYTES", 1)  # one tensor per read
    _, cast, step = checkpoint.load_params(run_dir, dtype="bfloat16")
    _, full, _ = checkpoint.load_params(run_dir)
    assert step == STEP
    for a, b in zip(jax.tree.leaves(cast), jax.tree.leaves(full)):
        assert a.dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(a, b.astype(ml_dtypes.bfloat16))


def test_step_rows_record_the_hardware_the_card_reads():
    from trainer.run.loop import Speedometer

    row, _ = Speedometer(
        tokens_per_step=1024, flops_per_token=1e6, devices=8, peak_tflops=None, hardware="8 × cpu"
    ).row(steps=2, seconds=1.0, remaining_steps=0)
    assert row["hardware"] == "8 × cpu" and row["tokens_per_s"] == 2048
