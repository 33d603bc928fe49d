"""Our params ↔ HF LLaMA: for the tiny config and small models shaped like each seed architecture, transformers
(torch, fp32) loading our export gives our logits (≤ 1e-4 × the logit scale) and the same 20 greedy tokens."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from hf_models import ARCHITECTURES, export, greedy_hf, greedy_ours, random_params

from trainer.export import hf, mapping, parity
from trainer.export.safetensors import SafetensorsFolder

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_transformers_reproduces_our_logits_and_greedy_tokens(name, tmp_path):
    model = ARCHITECTURES[name]
    params = random_params(model)
    export(model, params, str(tmp_path), max_shard=200_000)  # small shards: exercises the index too
    tokens = parity.sample_tokens(model.vocab_size, batch=3, length=64)
    hf_model = parity.load_hf_model(str(tmp_path))
    result = parity.compare(parity.jax_logits(model, params, tokens), parity.hf_logits(hf_model, tokens))
    print(f"{name}: max |Δlogit| = {result.relative:.2e} × scale {result.scale:.3g}")
    assert result.relative <= parity.TOLERANCE
    prompt = tokens[0, :8]
    assert greedy_ours(model, params, prompt, 20) == greedy_hf(hf_model, prompt, 20)


def test_config_json_states_every_architecture_field(tmp_path):
    model = ARCHITECTURES["gqa14x2"]
    export(model, random_params(model), str(tmp_path), dtype="bfloat16")
    with open(tmp_path / "config.json") as f:
        cfg = json.load(f)
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    heads = (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"])
    assert heads == (112, 14, 2, 128)
    assert cfg["rope_parameters"] == {"rope_type": "default", "rope_theta": 500000.0}
    assert (cfg["rms_norm_eps"], cfg["tie_word_embeddings"], cfg["max_position_embeddings"]) == (1e-5, False, 64)
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"], cfg["dtype"]) == (2, 3, 0, "bfloat16")
    with open(tmp_path / "generation_config.json") as f:
        assert json.load(f)["eos_token_id"] == 3
    assert mapping.model_config(cfg, model) == model  # ModelConfig → LlamaConfig → ModelConfig


def test_sharding_writes_an_index_that_names_every_tensor(tmp_path):
    model = ARCHITECTURES["mha_tied"]
    params = random_params(model)
    export(model, params, str(tmp_path), max_shard=100_000)
    with open(tmp_path / "model.safetensors.index.json") as f:
        index = json.load(f)
    assert set(index["weight_map"]) == set(mapping.hf_shapes(model))
    assert len(set(index["weight_map"].values())) > 2
    files = SafetensorsFolder(str(tmp_path))
    back = mapping.from_hf(files.__getitem__, model)
    jax.tree.map(np.testing.assert_array_equal, back, params)  # ours → HF → ours is bitwise


def test_unsupported_hf_configs_and_mismatched_params_fail_with_one_line():
    model = ARCHITECTURES["mha_tied"]
    base = mapping.llama_config(model, bos_id=None, eos_id=None, pad_id=None).to_dict()
    with pytest.raises(mapping.MappingError, match="RoPE scaling 'dynamic' is not supported"):
        mapping.model_config({**base, "rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 8.0}})
    with pytest.raises(mapping.MappingError, match="attention_bias=True is not supported"):
        mapping.model_config({**base, "attention_bias": True})
    with pytest.raises(mapping.MappingError, match="model_type 'mistral'"):
        mapping.model_config({**base, "model_type": "mistral"})
    params = random_params(model)
    with pytest.raises(mapping.MappingError, match="has shape .* but the config implies"):
        mapping.check_params(params, dataclasses.replace(model, embed_dim=32))
    with pytest.raises(mapping.MappingError, match="does not match its params"):
        mapping.check_params(params, dataclasses.replace(model, num_layers=3))


def test_a_tampered_weight_fails_the_read_back_check(tmp_path):
    from safetensors.numpy import load_file, save_file

    model = ARCHITECTURES["mha_tied"]
    params = random_params(model)
    export(model, params, str(tmp_path))
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"][3, 5] += 1e-3
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(parity.ParityError, match="tensor model.layers.1.mlp.up_proj.weight differs"):
        hf.verify_hf(str(tmp_path), model, params, "float32", tokenizer=None)
