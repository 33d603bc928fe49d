"""Fine-tuning end to end with the real trainer: full SFT from a base run (the vocabulary grown for chat markers),
LoRA that resumes bitwise and keeps only adapters, and exports — merged, and as a PEFT adapter that `peft` loads on
the base's own export with the merged export's logits; the chat format and end-of-turn id travel with them."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from runs import (
    MICRO,
    assert_params_equal,
    final_params,
    losses,
    prepare_corpus,
    train,
    write_config,
)

from trainer import checkpoint
from trainer.config import from_dict
from trainer.data.chat_prepare import prepare_chat
from trainer.model.transformer import Transformer

BASE_MODEL = dict(MICRO["model"], scan_layers=True)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A 'pretrained' base run folder: random params saved as a checkpoint, the corpus tokenizer beside them."""
    root = tmp_path_factory.mktemp("sft")
    corpus = prepare_corpus(str(root / "corpus"))
    config = from_dict({"model": BASE_MODEL, "data": {"path": corpus}})
    params = Transformer(config.model).init(jax.random.key(5), jnp.zeros((1, 8), jnp.int32))["params"]
    params = jax.tree.map(
        lambda x: np.asarray(x.unbox() if hasattr(x, "unbox") else x), params, is_leaf=lambda x: hasattr(x, "unbox")
    )
    run = str(root / "base")
    checkpoint.save_params(run, config, params, step=7)
    os.makedirs(os.path.join(run, "tokenizer"))
    shutil.copy(os.path.join(corpus, "tokenizer.model"), os.path.join(run, "tokenizer", "tokenizer.model"))
    return root, run, params


def _json(path):
    with open(path) as f:
        return json.load(f)


def _chat_data(root, base, name, **kwargs):
    out = str(root / name)
    if not os.path.exists(out):
        prepare_chat(
            out=out,
            corpus="stdlib_qa",
            limit=240,
            tokenizer=os.path.join(base, "tokenizer"),
            val_fraction=0.1,
            verbose=False,
            **kwargs,
        )
    return out


def test_full_sft_grows_the_vocab_and_exports_the_chat_format(base_run, tmp_path):
    from trainer.export import command as convert_to_hf

    root, base, _ = base_run
    data = _chat_data(root, base, "kodalite", template="kodalite", markers="special")  # its markers as new ids
    run = str(tmp_path / "sft")
    config = write_config(
        str(tmp_path / "sft.yml"),
        data,
        run,
        model={**BASE_MODEL, "vocab_size": 516},
        data={"path": data, "chat_template": "kodalite"},
        mesh={"data": 1, "fsdp": 8},
        checkpoint={"every_steps": 4, "restore_from": base},
        train={"steps": 4},
        eval={"every_steps": 4},
    )
    out = train(config)
    assert f"started from {base}:7" in out and "eval_loss" in out
    assert _json(os.path.join(run, "base.json"))["restore_from"] == f"{base}:7"
    params = final_params(run)
    assert params["embed"]["embedding"].shape == (516, 64)  # 512 + <|system|> <|user|> <|assistant|> <|end|>
    # stopped after step 2 and started again, it resumes its own checkpoint (not the base's) bitwise
    resumed = [f"run.dir={tmp_path / 'resumed'}", "checkpoint.every_steps=2"]
    assert "stopped at step 2" in train(config, *resumed, expect=143, TRAINER_TEST_STOP_AT="2")
    again = train(config, *resumed)
    assert "resuming from" in again and "started from" not in again
    assert losses(str(tmp_path / "resumed")) == losses(run)
    assert_params_equal(final_params(str(tmp_path / "resumed")), params)
    # a mismatched template is refused before anything is written
    bad = train(config, "data.chat_template=chatml", f"run.dir={tmp_path / 'bad'}", expect=2)
    assert "prepared with chat template 'kodalite'" in bad and not os.path.exists(tmp_path / "bad")

    export = str(tmp_path / "hf")
    assert convert_to_hf.main(["--checkpoint", run, "--out", export]) == 0  # parity incl. apply_chat_template
    end = _json(os.path.join(data, "chat_template.json"))["end_of_turn_id"]
    assert end == 515 and _json(os.path.join(export, "generation_config.json"))["eos_token_id"] == end
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(export, local_files_only=True)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|user|>\nhi\n<|assistant|>\n" and tok.convert_tokens_to_ids("<|end|>") == end
    gguf_out = str(tmp_path / "gguf")
    assert convert_to_hf.main(["--checkpoint", run, "--out", gguf_out, "--format", "gguf", "--no-verify"]) == 0
    from gguf import GGUFReader

    reader = GGUFReader(os.path.join(gguf_out, next(f for f in os.listdir(gguf_out) if f.endswith(".gguf"))))
    field = reader.fields["tokenizer.ggml.eos_token_id"]
    assert int(field.parts[field.data[0]][0]) == end


def _lora_config(tmp_path, base, data, name):
    run = str(tmp_path / name)
    path = write_config(
        str(tmp_path / f"{name}.yml"),
        data,
        run,
        model={**BASE_MODEL, "lora": {"rank": 4, "alpha": 8.0, "dropout": 0.1}},
        data={"path": data, "chat_template": "chatml", "end_of_turn": "</s>"},
        mesh={"data": 2, "fsdp": 4},
        checkpoint={"every_steps": 2, "restore_from": base},
        train={"steps": 4},
        optimizer={"learning_rate": 3e-2, "warmup_steps": 1},
        eval={"every_steps": 4},
    )
    return path, run


def test_lora_resumes_bitwise_and_exports_merged_and_as_peft(base_run, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainer.export import command as convert_to_hf
    from trainer.run_folder import load_run, open_run

    root, base, base_params = base_run
    data = _chat_data(root, base, "chatml", template="chatml", end_of_turn="</s>")  # </s>: one id, no new rows
    straight, ref = _lora_config(tmp_path, base, data, "straight")
    out = train(straight)
    assert "LoRA rank 4" in out and "trainable of" in out
    config, run = _lora_config(tmp_path, base, data, "resumed")
    assert "stopped at step 3" in train(config, expect=143, TRAINER_TEST_STOP_AT="3")
    train(config)
    assert losses(run) == losses(ref)
    adapters = final_params(run)
    assert_params_equal(adapters, final_params(ref))
    leaves = jax.tree_util.tree_flatten_with_path(adapters)[0]
    assert all(jax.tree_util.keystr(p).endswith(("['lora_a']", "['lora_b']")) for p, _ in leaves)  # adapters only
    assert_params_equal(final_params(base), base_params)  # the base run is untouched

    exports = {name: str(tmp_path / name) for name in ("base-hf", "merged", "adapter")}
    assert convert_to_hf.main(["--checkpoint", base, "--out", exports["base-hf"], "--no-verify"]) == 0
    assert convert_to_hf.main(["--checkpoint", run, "--out", exports["merged"], "--merge-lora"]) == 0
    assert convert_to_hf.main(["--checkpoint", run, "--out", exports["adapter"], "--adapter-only"]) == 0
    assert sorted(os.listdir(exports["adapter"])) >= ["adapter_config.json", "adapter_model.safetensors"]

    tokens = torch.tensor([[5, 17, 99, 3, 250, 42, 7, 300]])
    merged = AutoModelForCausalLM.from_pretrained(exports["merged"], local_files_only=True, dtype=torch.float32)
    with torch.no_grad():
        merged_logits = merged(tokens).logits.numpy()
        plain = AutoModelForCausalLM.from_pretrained(exports["base-hf"], local_files_only=True, dtype=torch.float32)
        base_logits = plain(tokens).logits.numpy()  # before peft injects the adapters into `plain`
        peft_logits = PeftModel.from_pretrained(plain, exports["adapter"]).eval()(tokens).logits.numpy()
    np.testing.assert_allclose(peft_logits, merged_logits, atol=1e-4, rtol=1e-4)
    # ... and both are the unmerged model's: base + adapters applied side by side by our model (fp32)
    cfg, full = open_run(run).host_params(merged=False)
    model_cfg = cfg.model.__class__(**{**cfg.model.__dict__, "compute_dtype": "float32"})
    ours = np.asarray(Transformer(model_cfg).apply({"params": full}, jnp.asarray(tokens.numpy())))
    np.testing.assert_allclose(merged_logits, ours, atol=1e-4, rtol=1e-4)
    assert not np.allclose(merged_logits, base_logits, atol=1e-3)  # the adapters did change the model
    # the run API, which lm-eval's model and generation load with, reads the LoRA run itself: base and adapters
    evaluated = load_run(run).params
    scored = Transformer(model_cfg).apply({"params": jax.device_get(evaluated)}, jnp.asarray(tokens.numpy()))
    scored = np.asarray(scored)
    np.testing.assert_allclose(scored, ours, atol=1e-6, rtol=1e-6)
