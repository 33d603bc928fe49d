"""RoPE scaling survives every export: for each type our logits equal transformers' on the exported folder at twice the
original context (max |Δ| ≤ 1e-4 × the logit scale, fp32), the GGUF carries what llama.cpp reads (checked key by key
and by recomputing llama.cpp's frequencies from the file), and HF → ours → HF keeps the config.

The model: 2 layers, head dim 16, pretrained context 64 extended to 128 (factor 2).
"""

import dataclasses
import importlib.util
import json
import os

import gguf
import numpy as np
import pytest
from hf_models import HAS_ACCELERATE, export, random_params
from sp_tokenizers import sentencepiece

from trainer.config import ModelConfig, RopeScalingConfig, load_config
from trainer.errors import ConfigError, ConversionError, ParityError
from trainer.export import gguf as gguf_export
from trainer.export import gguf_rope, mapping, parity
from trainer.export.tokenizer import write_tokenizer
from trainer.model import rope

HAS_MLX = importlib.util.find_spec("mlx_lm") is not None
HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
BASE = ModelConfig(
    vocab_size=520,
    embed_dim=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    mlp_dim=96,
    max_seq_len=128,
    compute_dtype="float32",
    remat_policy="none",
    tie_embeddings=False,
)
SCALINGS = {
    "linear": RopeScalingConfig(type="linear", factor=2.0),
    "ntk": RopeScalingConfig(type="ntk", factor=2.0),
    "yarn": RopeScalingConfig(type="yarn", factor=2.0),  # original context 128 / 2 = 64
    "yarn_explicit": RopeScalingConfig(
        type="yarn", factor=2.0, original_max_seq_len=64, beta_fast=16.0, beta_slow=2.0, attention_factor=1.25
    ),
    "llama3": RopeScalingConfig(type="llama3", factor=2.0, original_max_seq_len=64),
}


def scaled(name: str) -> ModelConfig:
    return dataclasses.replace(BASE, rope_scaling=SCALINGS[name])


def read_back(model: ModelConfig) -> ModelConfig:
    """What an export of `model` must import as: ntk becomes its plain θ', the original context is spelled out."""
    r = model.rope_scaling
    if r.type == "ntk":
        return dataclasses.replace(model, rope_theta=rope.effective_theta(model), rope_scaling=RopeScalingConfig())
    if r.type in ("yarn", "llama3"):
        r = dataclasses.replace(r, original_max_seq_len=rope.original_max_seq_len(model))
    return dataclasses.replace(model, rope_scaling=r)


@pytest.fixture(scope="module")
def params():
    return random_params(BASE)


@pytest.fixture(scope="module")
def tokens():
    return parity.sample_tokens(BASE.vocab_size, batch=2, length=BASE.max_seq_len)  # positions 0..127


@pytest.fixture(scope="module")
def plain_logits(params, tokens):
    return parity.jax_logits(BASE, params, tokens)


@pytest.mark.parametrize("name", sorted(SCALINGS))
def test_transformers_computes_our_logits_beyond_the_original_context(name, params, tokens, plain_logits, tmp_path):
    model = scaled(name)
    export(model, params, str(tmp_path))
    ours = parity.jax_logits(model, params, tokens)
    theirs = parity.hf_logits(parity.load_hf_model(str(tmp_path)), tokens)
    result = parity.compare(ours, theirs)
    print(f"{name}: max |Δlogit| = {result.relative:.2e} × scale {result.scale:.3g}")
    assert result.relative <= parity.TOLERANCE
    assert parity.compare(plain_logits, ours).relative > 100 * parity.TOLERANCE  # the scaling changes the model
    if HAS_MLX:  # mlx-lm reads the same folder through the legacy keys only
        from trainer.export import mlx

        mlx_result = parity.compare(ours, mlx.logits(mlx.load(str(tmp_path)), tokens))
        print(f"{name}: mlx-lm max |Δlogit| = {mlx_result.relative:.2e}")
        assert mlx_result.relative <= parity.TOLERANCE

    with open(tmp_path / "config.json") as f:
        cfg = json.load(f)
    r = model.rope_scaling
    assert cfg["max_position_embeddings"] == 128
    assert cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"]  # the legacy key mlx-lm reads
    if r.type == "ntk":
        assert cfg["rope_parameters"] == {"rope_type": "default", "rope_theta": pytest.approx(10000 * 2 ** (16 / 14))}
        assert "rope_scaling" not in cfg
    else:
        assert cfg["rope_parameters"]["rope_type"] == r.type and cfg["rope_parameters"]["factor"] == 2.0
        legacy = cfg["rope_scaling"]  # read first by transformers when present, and by older readers
        assert legacy["type"] == legacy["rope_type"] == r.type
        assert {k: v for k, v in legacy.items() if k != "type"} == {
            k: v for k, v in cfg["rope_parameters"].items() if k != "rope_theta"
        }
    if r.type in ("yarn", "llama3"):
        assert cfg["rope_parameters"]["original_max_position_embeddings"] == 64

    imported = mapping.model_config(cfg, BASE)  # HF → ours
    assert imported == read_back(model)
    again = mapping.llama_config(imported, bos_id=None, eos_id=None, pad_id=None).to_dict()  # → HF
    for key in ("rope_parameters", "rope_theta", "max_position_embeddings"):
        assert again[key] == cfg[key]
    assert again.get("rope_scaling") == cfg.get("rope_scaling")


@pytest.mark.skipif(not HAS_ONNX, reason="the onnx extra is not installed")
def test_onnx_decoder_rotates_with_the_scaling(params, tokens, tmp_path):
    from trainer.export import onnx as onnx_export

    model = scaled("yarn_explicit")  # scaled frequencies and a cos/sin factor
    onnx_export.write_onnx(str(tmp_path), model, params, "float32")
    logits, _ = onnx_export.run(onnx_export.session(str(tmp_path)), tokens)
    assert parity.compare(parity.jax_logits(model, params, tokens), logits).relative <= parity.TOLERANCE


def test_hf_configs_in_other_spellings_import_or_fail_in_one_line():
    base = mapping.llama_config(BASE, bos_id=None, eos_id=None, pad_id=None).to_dict()
    del base["rope_parameters"]
    # the pre-transformers-5 form: only `rope_scaling` with `type`, θ at the top
    old = mapping.model_config({**base, "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 4.0}})
    assert old.rope_theta == 5e5 and old.rope_scaling == RopeScalingConfig(type="linear", factor=4.0)
    # yarn without factor: the ratio of the contexts; DeepSeek's mscale pair: transformers' attention factor
    yarn = mapping.model_config(
        {
            **base,
            "rope_parameters": {
                "rope_type": "yarn",
                "rope_theta": 1e4,
                "factor": None,
                "original_max_position_embeddings": 32,
                "mscale": 1.0,
                "mscale_all_dim": 0.5,
            },
        }
    )
    expected = (0.1 * np.log(4.0) + 1) / (0.05 * np.log(4.0) + 1)
    assert yarn.rope_scaling.factor == 4.0 and yarn.rope_scaling.attention_factor == pytest.approx(expected)
    for params, message in [
        ({"rope_type": "dynamic", "factor": 2.0}, "'dynamic' is not supported .*run time"),
        ({"rope_type": "longrope", "factor": 2.0}, "'longrope' is not supported"),
        ({"rope_type": "yarn", "factor": 2.0, "truncate": False}, "truncate=false is not supported"),
        ({"rope_type": "default", "partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ]:
        with pytest.raises(mapping.MappingError, match=message):
            mapping.model_config({**base, "rope_parameters": {"rope_theta": 1e4, **params}})


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    write_tokenizer(sentencepiece(), str(folder), str(folder), add_bos=True)
    return str(folder)


@pytest.mark.parametrize("name", ["linear", "ntk", "yarn", "llama3"])
def test_gguf_carries_the_scaling_as_llama_cpp_reads_it(name, params, tokenizer_dir, tmp_path):
    model = scaled(name)
    path = str(tmp_path / "model-f16.gguf")
    gguf_export.write_gguf(path, model, params, tokenizer_dir, sentencepiece(), "f16")
    reader = gguf.GGUFReader(path)
    fields = gguf_rope.read_fields(reader)
    freqs = [t for t in reader.tensors if t.name == "rope_freqs.weight"]
    assert fields["context_length"] == 128 and fields["rope.dimension_count"] == 16
    theta = rope.effective_theta(model)
    assert fields["rope.freq_base"] == pytest.approx(theta, rel=1e-7)  # stored as float32
    if name in ("linear", "yarn"):
        assert (fields["rope.scaling.type"], fields["rope.scaling.factor"]) == (name, 2.0)
    else:
        assert "rope.scaling.type" not in fields
    if name == "yarn":
        assert fields["rope.scaling.original_context_length"] == 64
        assert (fields["rope.scaling.yarn_beta_fast"], fields["rope.scaling.yarn_beta_slow"]) == (32.0, 1.0)
    if name == "llama3":  # llama.cpp divides each frequency by this: the plain ones over the scaled ones
        plain = 1.0 / 1e4 ** (np.arange(0, 16, 2) / 16)
        np.testing.assert_allclose(
            np.asarray(freqs[0].data), plain / rope.inverse_frequencies(model, np.float64), rtol=1e-6
        )
        assert np.asarray(freqs[0].data)[0] == 1.0 and np.asarray(freqs[0].data)[-1] == 2.0  # kept / divided by 2
    else:
        assert not freqs

    gguf_rope.check_rope(path, model)  # llama.cpp's frequencies from the file = ours
    other = dataclasses.replace(model, rope_scaling=SCALINGS["llama3" if name != "llama3" else "yarn"])
    with pytest.raises(ParityError, match="other RoPE frequencies"):
        gguf_rope.check_rope(path, other)
    if HAS_ACCELERATE and name in ("yarn", "llama3"):  # transformers' GGUF loader on the stored weights
        assert gguf_export.verify_gguf(str(tmp_path), "model-f16.gguf", model, params, "f16").startswith("parity ok")


def test_gguf_refuses_a_yarn_attention_factor_llama_cpp_cannot_read(params, tokenizer_dir, tmp_path):
    path = tmp_path / "m.gguf"
    with pytest.raises(ConversionError, match="GGUF cannot carry yarn's attention_factor=1.25"):
        gguf_export.write_gguf(str(path), scaled("yarn_explicit"), params, tokenizer_dir, sentencepiece(), "f16")
    assert not path.exists()


@pytest.mark.parametrize(
    "override, message",
    [
        (["model.rope_scaling.factor=2"], "has no effect while model.rope_scaling.type is none"),
        (["model.rope_scaling.type=linear", "model.rope_scaling.factor=0.5"], "factor must be at least 1"),
        (
            [
                "model.rope_scaling.type=yarn",
                "model.rope_scaling.factor=2",
                "model.rope_scaling.original_max_seq_len=1024",
            ],
            "at most model.max_seq_len=256",
        ),
        (
            ["model.rope_scaling.type=yarn", "model.rope_scaling.factor=2", "model.rope_scaling.beta_fast=0.5"],
            "beta_fast .* must exceed beta_slow",
        ),
        (
            ["model.rope_scaling.type=llama3", "model.rope_scaling.factor=2", "model.rope_scaling.low_freq_factor=8"],
            "high_freq_factor .* must exceed low_freq_factor",
        ),
        (["model.rope_scaling.type=dynamic"], "must be one of"),
    ],
)
def test_bad_scalings_are_one_line_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(os.path.join(CONFIGS, "tiny.yml"), override)


def test_extension_recipes_load():
    tiny = load_config(os.path.join(CONFIGS, "extend-tiny.yml"))
    assert (tiny.model.max_seq_len, tiny.train.seq_len, tiny.checkpoint.restore_from) == (512, 512, "runs/tiny")
    assert rope.original_max_seq_len(tiny.model) == 256 and tiny.model.rope_scaling.type == "yarn"
    big = load_config(os.path.join(CONFIGS, "extend-2048.yml"))
    assert (big.model.max_seq_len, big.train.seq_len, rope.original_max_seq_len(big.model)) == (2048, 2048, 1024)
    assert big.model.embed_dim == load_config(os.path.join(CONFIGS, "1.3b.yml")).model.embed_dim
