"""HF → ours → HF is bitwise: `convert_from_hf` writes a run folder that training can restore from, and
`convert_to_hf` gives back the very same tensors (float32, and bfloat16 through float32 params)."""

import json
import os

import jax
import numpy as np
import pytest
import torch
from flax import linen as nn
from sp_tokenizers import sentencepiece
from transformers import LlamaConfig, LlamaForCausalLM

from trainer import checkpoint
from trainer.export import command as convert_to_hf
from trainer.export import import_hf as convert_from_hf
from trainer.export.safetensors import SafetensorsFolder
from trainer.export.tokenizer import write_tokenizer
from trainer.model.transformer import Transformer

ARCHITECTURE_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "rope_parameters",
    "tie_word_embeddings",
    "max_position_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


def write_hf_model(folder: str, dtype: torch.dtype) -> None:
    """A random untied GQA LLaMA (θ 500000, eps 1e-6, random norm scales) and a tokenizer, saved by transformers."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.2 if "norm" in name else 0.1)
    model.to(dtype).save_pretrained(folder)
    write_tokenizer(sentencepiece(), folder, folder, add_bos=True)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_hf_to_ours_to_hf_is_bitwise(tmp_path, capsys, dtype):
    src, run, out = str(tmp_path / "src"), str(tmp_path / "run"), str(tmp_path / "out")
    write_hf_model(src, getattr(torch, dtype))

    assert convert_from_hf.main(["--hf", src, "--out", run]) == 0
    assert "parity ok" in capsys.readouterr().out
    config = checkpoint.read_run_config(run)
    assert (config.model.num_kv_heads, config.model.head_dim, config.model.rope_theta) == (2, 16, 500000.0)
    assert config.model.param_dtype == "float32" and config.train.seq_len <= config.model.max_seq_len

    assert convert_to_hf.main(["--checkpoint", run, "--out", out, "--dtype", dtype]) == 0
    assert "parity ok" in capsys.readouterr().out
    before, after = SafetensorsFolder(src), SafetensorsFolder(out)
    assert sorted(before.names()) == sorted(after.names())
    for name in before.names():
        a, b = before[name], after[name]
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), name
    with open(os.path.join(src, "config.json")) as f, open(os.path.join(out, "config.json")) as g:
        first, second = json.load(f), json.load(g)
    assert {k: first[k] for k in ARCHITECTURE_KEYS} == {k: second[k] for k in ARCHITECTURE_KEYS}


def test_training_can_restore_from_the_imported_run(tmp_path, capsys):
    src, run = str(tmp_path / "src"), str(tmp_path / "run")
    write_hf_model(src, torch.float32)
    assert convert_from_hf.main(["--hf", src, "--out", run, "--no-verify"]) == 0
    assert os.path.isfile(os.path.join(run, "tokenizer", "tokenizer.json"))
    config = checkpoint.read_run_config(run)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = nn.unbox(jax.eval_shape(Transformer(config.model).init, jax.random.key(0), np.zeros((1, 4), np.int32)))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract["params"])
    params, step = checkpoint.restore_params_from(run, abstract)
    assert step == 0
    q = np.asarray(params["layers"]["attention"]["query"]["kernel"])  # [layers, embed, heads, head_dim]
    hf_q = SafetensorsFolder(src)["model.layers.1.self_attn.q_proj.weight"]  # [heads·hd, embed]
    np.testing.assert_array_equal(q[1].reshape(64, 128).T, hf_q)

    assert convert_from_hf.main(["--hf", src, "--out", run]) == 2  # an existing run folder needs --force
    assert "already exists" in capsys.readouterr().err
    assert convert_from_hf.main(["--hf", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "config.json is missing" in capsys.readouterr().err
