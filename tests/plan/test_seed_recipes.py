"""The seed recipes (configs/*.yml) carry their model cards' numbers: each recipe is loaded through the project's own
config loader and planner, and what they derive (parameters, tokens per step and in total, the Chinchilla share,
stages, mixtures, optimizer) is compared with the card's figures (docs: README "Seed model recipes")."""

from __future__ import annotations

import json
import math
import os

import pytest

from trainer import plan
from trainer.config import load_config
from trainer.data.shards import Manifest, ShardInfo, write_manifest
from trainer.errors import ConfigError
from trainer.hardware import CHIPS
from trainer.model import rope
from trainer.run import budget

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")


def _recipe(name: str, *overrides: str):
    path = os.path.join(CONFIGS, name)
    config = load_config(path, list(overrides))
    return config, budget.plan_config(config, path)


def _mixture(components) -> dict[str, float]:
    return {os.path.basename(c.path): c.weight for c in components}


def _adamw(config, b1=0.9, b2=0.95, weight_decay=0.1):
    o = config.optimizer
    return (o.b1, o.b2, o.weight_decay) == (b1, b2, weight_decay)


def _plan_cli(capsys, *argv: str) -> tuple[str, dict]:
    assert plan.main(list(argv)) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return "\n".join(lines), json.loads(lines[-1])


def test_kodalite_sees_1_64b_tokens_6_5_percent_of_chinchilla_in_its_hours_on_2_l40s(capsys):
    config, p = _recipe("1.3b.yml")
    assert p.params == 1_269_209_088 and f"{p.params / 1e9:.2f}" == "1.27"  # card: 1.27B
    assert 1.64e9 <= p.tokens < 1.64e9 + p.tokens_per_step  # card: 1.64B tokens, in whole steps
    # card: 6.5 % of the Chinchilla-optimal ~25B
    assert f"{p.chinchilla_percent:.1f}" == "6.5" and f"{p.chinchilla_tokens / 1e9:.1f}" == "25.4"
    m = config.model
    assert (
        m.num_layers,
        m.embed_dim,
        m.num_heads,
        m.num_kv_heads,
        m.resolved_head_dim,
        m.mlp_dim,
        m.vocab_size,
        m.rope_theta,
        m.max_seq_len,
        m.tie_embeddings,
    ) == (24, 2048, 32, 8, 64, 5504, 50257, 10000.0, 1024, False)
    text, record = _plan_cli(
        capsys, "--config", os.path.join(CONFIGS, "1.3b.yml"), "--hardware", "2xl40s", "--mfu", "0.2"
    )
    c = record["config"]
    hours = c["flops"] / (2 * CHIPS["l40s"].peak_bf16_tflops * 1e12 * 0.2 * 3600)
    assert c["steps"] == config.train.steps and c["hours"] == pytest.approx(hours)
    assert 20 < c["hours"] < 30  # the card: ~25 hours on its 2× L40S (~18 % MFU)
    assert "6.5% of Chinchilla-optimal" in text and f"{hours:.1f} h on 2xl40s" in text


def test_auto_g_nano_runs_262144_tokens_per_step_for_50000_steps_on_its_mixture(capsys):
    config, p = _recipe("1b.yml")
    assert p.params == 1_050_002_688
    assert p.tokens_per_step == 262_144 and p.steps == 50_000 and f"{p.tokens / 1e9:.1f}" == "13.1"
    assert round(p.chinchilla_percent) in (60, 61, 62)  # card: ~60 % of Chinchilla-optimal
    assert _mixture(config.data.mixture) == {
        "fineweb-edu-dedup": 0.40,
        "cosmopedia-v2": 0.25,
        "starcoderdata-python": 0.35,
    }
    o = config.optimizer
    assert _adamw(config) and o.learning_rate == 3e-4 and o.schedule == "cosine" and o.warmup_steps > 0
    m = config.model
    assert (m.embed_dim, m.num_heads, m.num_kv_heads, m.resolved_head_dim, m.mlp_dim, m.rope_theta) == (
        1792,
        14,
        2,
        128,
        5376,
        500000.0,
    )
    text, record = _plan_cli(
        capsys, "--config", os.path.join(CONFIGS, "1b.yml"), "--hardware", "2xrtx-pro-6000", "--mfu", "0.2"
    )
    hours = record["config"]["flops"] / (2 * CHIPS["rtx-pro-6000"].peak_bf16_tflops * 1e12 * 0.2 * 3600)
    assert record["config"]["hours"] == pytest.approx(hours) and f"{hours:,.0f} h on 2xrtx-pro-6000" in text


def test_smallcoder_curriculum_has_the_cards_three_stages_and_its_sft_the_fourth():
    config, p = _recipe("303m.yml")
    assert p.params == 302_027_520
    stages = config.data.stages
    ends = [s.start_step for s in stages[1:]] + [p.steps]
    stage_tokens = [(end - s.start_step) * p.tokens_per_step for s, end in zip(stages, ends)]
    for tokens, card in zip(stage_tokens, (6.3e9, 7.5e9, 10e9), strict=True):
        assert card <= tokens < card + p.tokens_per_step
    assert [_mixture(s.mixture) for s in stages] == [
        {"fineweb-edu": 1.0},
        {"nemotron-code-qa-cot": 0.60, "starcoderdata": 0.40},
        {"nemotron-cc-math-4plus": 0.40, "finewiki-en": 0.35, "nemotron-cc-math-4": 0.15, "openwebmath": 0.10},
    ]
    assert config.model.vocab_size == 49152 and _adamw(config)

    sft, q = _recipe("sft-smallcoder.yml")
    assert 6e9 <= q.tokens < 6e9 + q.tokens_per_step and not sft.data.stages
    assert _mixture(sft.data.mixture) == {
        "nemotron-sft-code": 0.45,
        "opencodeinstruct": 0.30,
        "openmathinstruct-2": 0.15,
        "nemotron-sft-general": 0.10,
    }
    assert sft.checkpoint.restore_from == f"{config.run.dir}:{p.steps}"  # from the stage-3 checkpoint
    assert sft.data.chat_template == "smallcoder"
    assert f"{(sum(stage_tokens) + q.tokens) / 1e9:.1f}" == "29.8"  # card: 29.8B tokens in four stages


def test_litellama_runs_batch_192_for_499679_steps():
    config, p = _recipe("460m.yml")
    assert (config.train.global_batch_size, config.train.seq_len, p.steps) == (192, 1024, 499_679)
    assert p.tokens == 499_679 * 192 * 1024 == 98_240_888_832  # the card's "≈ 0.98T" is this product: 98.2B
    assert config.model.vocab_size == 50257 and abs(p.params / 461.7e6 - 1) < 0.01


def _chat_manifest(folder, train_tokens: int) -> str:
    shards = (
        ShardInfo("train-0.arrayrecord", "train", 15_000, train_tokens, "0" * 64),
        ShardInfo("val-0.arrayrecord", "val", 300, 70_000, "0" * 64),
    )
    write_manifest(
        str(folder), Manifest(tokenizer={"kind": "hf", "vocab_size": 50257}, dtype="uint16", shards=shards, kind="chat")
    )
    return str(folder)


def test_sft_recipes_are_sized_in_epochs_of_their_data(tmp_path, capsys):
    """train.epochs: the steps come from the prepared folder's train tokens, for the job and the planner alike."""
    config, _ = _recipe("sft-dolly.yml")
    assert config.train.epochs == 3 and config.optimizer.learning_rate == 5e-5  # card: 3 epochs, peak 5e-5
    assert config.optimizer.schedule == "cosine" and config.data.chat_template == "alpaca"
    dolly = _chat_manifest(tmp_path / "dolly", 3_500_000)  # Dolly-15k: ~3.5M tokens
    resolved = budget.with_epochs(load_config(os.path.join(CONFIGS, "sft-dolly.yml"), [f"data.path={dolly}"]))
    per_step = config.train.global_batch_size * config.train.seq_len
    assert resolved.train.steps == math.ceil(3 * 3_500_000 / per_step)
    _, record = _plan_cli(capsys, "--config", os.path.join(CONFIGS, "sft-dolly.yml"), f"data.path={dolly}")
    assert record["config"]["steps"] == resolved.train.steps
    assert 3 * 3_500_000 <= record["config"]["tokens"] < 3 * 3_500_000 + per_step

    lora, _ = _recipe("lora-kodalite.yml")
    assert (lora.model.lora.rank, lora.model.lora.alpha) == (16, 32.0) and lora.train.epochs is not None
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(os.path.join(CONFIGS, "sft-dolly.yml"), ["train.epochs=2", "data.path=null"])


def test_kodalite_context_extension_is_ntk_from_its_1_64b_token_base():
    base, _ = _recipe("1.3b.yml")
    config, p = _recipe("extend-2048.yml")
    r = config.model.rope_scaling
    assert (r.type, r.factor, config.model.max_seq_len, config.train.seq_len) == ("ntk", 2.0, 2048, 2048)
    d = config.model.resolved_head_dim
    assert rope.effective_theta(config.model) == pytest.approx(10000.0 * 2.0 ** (d / (d - 2)))
    assert config.checkpoint.restore_from == base.run.dir and config.checkpoint.restore_params_only
    assert p.tokens < 0.1 * budget.plan_config(base, "").tokens  # a short continuation of the 1.64B-token base


def test_a_job_sized_in_epochs_trains_the_steps_its_data_gives(tmp_path):
    """A real (tiny) run with train.epochs: the steps come from its prepared folder's manifest, and the run folder's
    config records them (a resume, an export and the card see the same run)."""
    from runs import losses, prepare_corpus, train, write_config

    from trainer.checkpoint import read_run_config
    from trainer.data.shards import read_manifest

    data = prepare_corpus(str(tmp_path / "data"))
    tokens = read_manifest(data).totals()["train"]["tokens"]
    per_step = 8 * 64  # runs.MICRO: 8 sequences × 64 tokens
    epochs = 3.5 * per_step / tokens  # a few steps' worth of the corpus
    run = str(tmp_path / "run")
    out = train(
        write_config(
            str(tmp_path / "c.yml"),
            data,
            run,
            train={"epochs": epochs, "steps": 1000},
            eval={"every_steps": 100},
            checkpoint={"every_steps": 100},
        )
    )
    steps = math.ceil(epochs * tokens / per_step)
    assert steps == 4 and read_run_config(run).train.steps == steps
    assert max(losses(run)) == steps and f"plan: {steps} steps × {per_step} tokens" in out
