"""Importing a released byte-level seed: an HF LlamaForCausalLM folder with a GPT-2-style tokenizer (as KodaLite,
auto-g-nano and LiteLlama ship) → `convert_from_hf` → a run folder whose `trainer.generate` encodes prompts to
transformers' ids and decodes greedily to transformers' tokens (fp32)."""

import json
import os
import shutil

import pytest
from bpe_tokenizers import gpt2_style

from trainer.export import import_hf
from trainer.infer import cli

# digits, a contraction, accents, an emoji of several byte-level tokens, runs of spaces, a tab
PROMPT = "In 2024 it's   naïve 😀:\n\tdef f(x):"
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def hf_seed(tmp_path_factory):
    """A small LlamaForCausalLM with random weights and a GPT-2-style byte-level BPE, saved as a release is."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("seed")
    tokenizer = gpt2_style(str(root / "tok"))
    folder = str(root / "hf")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=511,
        eos_token_id=511,
        tie_word_embeddings=False,
        initializer_range=0.3,
    )  # a clear logit spread: greedy ties can't flip on rounding
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(folder)
    for name in os.listdir(tokenizer):
        shutil.copy(os.path.join(tokenizer, name), folder)
    return folder


def test_a_byte_level_seed_imports_and_generates_as_transformers_does(hf_seed, tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = str(tmp_path / "imported")
    assert import_hf.main(["--hf", hf_seed, "--out", run]) == 0, capsys.readouterr().err
    capsys.readouterr()
    args = ["--checkpoint", run, "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS), "--dtype", "float32"]
    session = cli.Session(cli.parse_args(args))
    tok = AutoTokenizer.from_pretrained(hf_seed, local_files_only=True)
    theirs_prompt = tok(PROMPT)["input_ids"]
    assert session.encode(PROMPT) == theirs_prompt  # same ids, and no BOS the released tokenizer doesn't add
    assert session.tokenizer.decode(theirs_prompt) == PROMPT
    assert cli.main(args + ["--output", "json"]) == 0
    ours = json.loads(capsys.readouterr().out)

    model = AutoModelForCausalLM.from_pretrained(hf_seed, local_files_only=True, dtype=torch.float32)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([theirs_prompt]), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tok.eos_token_id
        )
    theirs = out[0, len(theirs_prompt) :].tolist()
    assert ours["tokens"] == theirs
    assert ours["text"] == tok.decode([t for t in theirs if t != tok.eos_token_id])
