"""The run planner on hand-computed budgets: Chinchilla-optimal size, a config's tokens and steps, hours to a target."""

from __future__ import annotations

import json
import math
import os

import pytest

from trainer import plan
from trainer.config import load_config
from trainer.run import budget

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
KODALITE = os.path.join(CONFIGS, "1.3b.yml")

# configs/1.3b.yml by hand: 24 layers × width 2048, 32 query / 8 kv heads × 64, MLP 5504, vocab 50257, untied,
# seq 1024, batch 512 (KodaLite's recipe; its own steps are tests/plan/test_seed_recipes.py's).
KODALITE_PARAMS = 24 * (2048 * 64 * (32 + 32 + 8 + 8) + 3 * 2048 * 5504 + 2 * 2048) + 2 * 50257 * 2048 + 2048
KODALITE_FLOPS_PER_TOKEN = (
    6 * (24 * (2048 * 64 * 80 + 3 * 2048 * 5504) + 50257 * 2048)  # every matmul weight
    + 6 * 24 * 1024 * 32 * 64
)  # causal attention: QKᵀ and AV
KODALITE_TOKENS_PER_STEP = 512 * 1024


def _run(capsys, *argv: str) -> tuple[int, str, dict]:
    code = plan.main(list(argv))
    out = capsys.readouterr().out.strip().splitlines()
    return code, "\n".join(out), json.loads(out[-1]) if code == 0 else {}


def test_hand_computed_constants_match_the_flops_module():
    assert KODALITE_PARAMS == 1_269_209_088 and KODALITE_FLOPS_PER_TOKEN == 7_299_084_288
    plan_ = budget.plan_config(load_config(KODALITE), KODALITE, tokens=1)
    assert (plan_.params, plan_.flops_per_token) == (KODALITE_PARAMS, KODALITE_FLOPS_PER_TOKEN)


def test_kodalite_saw_6_5_percent_of_chinchilla(capsys):
    """1.27B parameters on 1.64B tokens: 6.5 % of the 25.4B that 20 tokens per parameter ask for."""
    code, text, record = _run(capsys, "--config", KODALITE, "--tokens", "1.64B")
    assert code == 0
    c = record["config"]
    steps = math.ceil(1.64e9 / KODALITE_TOKENS_PER_STEP)  # 3,129 whole steps
    assert c["steps"] == steps == 3129 and c["tokens"] == steps * KODALITE_TOKENS_PER_STEP
    assert c["chinchilla_tokens"] == 20 * KODALITE_PARAMS == 25_384_181_760
    assert c["chinchilla_percent"] == pytest.approx(100 * 3129 * 524288 / 25_384_181_760)
    assert f"{c['chinchilla_percent']:.1f}" == "6.5" and "6.5% of Chinchilla-optimal" in text
    assert record["budget"] is None and c["hours"] is None


def test_flops_budget_gives_the_compute_optimal_size_and_tokens():
    params, tokens = budget.compute_optimal(1.2e21)  # 1.2e21 / (6 · 20) = 1e19 = N²
    assert params == pytest.approx(math.sqrt(1e19)) and tokens == pytest.approx(20 * math.sqrt(1e19))


def test_v4_32_for_72_hours_picks_the_closest_seed_and_counts_its_tokens(capsys):
    code, text, record = _run(capsys, "--hardware", "v4-32", "--hours", "72", "--mfu", "0.45")
    assert code == 0
    flops_budget = 16 * 72 * 3600 * 275e12 * 0.45  # 16 chips × 72 h × peak × MFU = 5.13216e20
    assert record["budget"] == {
        "flops": pytest.approx(flops_budget),
        "hardware": "v4-32",
        "chips": 16,
        "peak_tflops": 275.0,
        "mfu": 0.45,
        "mfu_from": "--mfu",
        "hours": 72.0,
        "chip_hours": 1152.0,
    }
    n_opt = math.sqrt(flops_budget / 120)  # 2.07B
    assert record["compute_optimal"]["params"] == pytest.approx(n_opt)
    assert record["compute_optimal"]["tokens"] == pytest.approx(20 * n_opt)
    c = record["config"]
    assert os.path.basename(c["path"]) == "1.3b.yml" and c["closest_seed"]  # 1.27B: nearest to 2.07B by ratio
    steps = math.floor(flops_budget / (KODALITE_FLOPS_PER_TOKEN * KODALITE_TOKENS_PER_STEP))
    assert c["steps"] == steps == 134_110
    assert c["tokens"] == steps * KODALITE_TOKENS_PER_STEP
    assert c["chinchilla_percent"] == pytest.approx(100 * steps * KODALITE_TOKENS_PER_STEP / (20 * KODALITE_PARAMS))
    assert c["hours"] <= 72 and c["hours"] == pytest.approx(72, rel=1e-4)
    assert "2.07B parameters on 41.4B tokens" in text


def test_token_target_on_a_slice_gives_the_hours(capsys):
    code, text, record = _run(
        capsys, "--config", KODALITE, "--tokens", "25.4e9", "--hardware", "v4-32", "--mfu", "0.45"
    )
    assert code == 0
    c = record["config"]
    steps = math.ceil(25.4e9 / KODALITE_TOKENS_PER_STEP)
    chip_hours = steps * KODALITE_TOKENS_PER_STEP * KODALITE_FLOPS_PER_TOKEN / (275e12 * 0.45 * 3600)
    assert c["steps"] == steps and c["chip_hours"] == pytest.approx(chip_hours)
    assert c["hours"] == pytest.approx(chip_hours / 16) and 25 < c["hours"] < 27
    assert f"{chip_hours / 16:,.1f} h on v4-32" in text


def test_chip_hours_of_a_generation(capsys):
    code, _, record = _run(
        capsys,
        "--chip-hours",
        "1000",
        "--hardware",
        "v5e",
        "--mfu",
        "0.5",
        "--config",
        os.path.join(CONFIGS, "303m.yml"),
    )
    assert code == 0
    assert record["budget"]["flops"] == pytest.approx(1000 * 3600 * 197e12 * 0.5)
    assert record["budget"]["chips"] is None and record["budget"]["hours"] is None
    assert not record["config"]["closest_seed"]


def test_without_a_token_target_a_config_is_planned_for_its_own_steps(capsys):
    code, _, record = _run(capsys, "--config", KODALITE)
    assert code == 0 and record["config"]["steps"] == load_config(KODALITE).train.steps
    code, _, record = _run(capsys, "--config", KODALITE, "train.steps=7")
    assert code == 0 and record["config"]["tokens"] == 7 * KODALITE_TOKENS_PER_STEP


def test_mfu_measured_in_a_run_folder(tmp_path, capsys):
    rows = [
        {"step": 10, "loss": 3.0},
        {"step": 20, "mfu": 0.30},
        {"step": 30, "mfu": 0.50},
        {"step": 30, "eval_loss": 3.1},
        {"step": 40, "mfu": 0.40},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert budget.measured_mfu(str(tmp_path)) == pytest.approx(0.40)
    code, _, record = _run(capsys, "--flops", "1e20", "--hardware", "v4-8", "--mfu-from", str(tmp_path))
    assert code == 0 and record["budget"]["mfu"] == pytest.approx(0.40)
    assert record["budget"]["mfu_from"] == str(tmp_path)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    code, _, _ = _run(capsys, "--flops", "1e20", "--hardware", "v4-8", "--mfu-from", str(tmp_path))
    assert code == 2


@pytest.mark.parametrize(
    "text, name, chips, peak",
    [
        ("v4-32", "v4-32", 16, 275.0),
        ("v5litepod-16", "v5litepod-16", 16, 197.0),
        ("v5e-8", "v5litepod-8", 8, 197.0),
        ("v5p-8", "v5p-8", 4, 459.0),
        ("v6e-4", "v6e-4", 4, 918.0),
        ("8xh100", "8xh100", 8, 989.0),
        ("2xl40s", "2xl40s", 2, 362.05),
        ("2xrtx-pro-6000", "2xrtx-pro-6000", 2, 503.8),
        ("2xrtx6000pro", "2xrtx-pro-6000", 2, 503.8),
        ("a100", "a100", None, 312.0),
        ("v5p", "v5p", None, 459.0),
    ],
)
def test_hardware_names_are_the_fit_checks(text, name, chips, peak):
    """--hardware takes --target's spelling (and a bare chip); the peak is the hardware table's dense bf16 one."""
    from trainer.hardware import parse_machine
    from trainer.target.check import resolve_target

    hw = budget.parse_hardware(text)
    assert (hw.name, hw.chips, hw.peak_tflops) == (name, chips, peak)
    if chips is not None:
        machine = parse_machine(text)
        assert (machine.name, machine.count, machine.chip.peak_bf16_tflops) == (name, chips, peak)
        try:
            assert resolve_target(text).chips == chips  # the fit check's own parser: the same machine
        except Exception as e:  # its compiler is not installed here: the message names the extra
            assert "pip install" in str(e)


def test_a_machine_outside_the_table_needs_its_peak(capsys):
    code, _, record = _run(capsys, "--hardware", "4xmi300x", "--peak-tflops", "1307", "--hours", "10", "--mfu", "0.3")
    assert code == 0 and record["budget"]["chips"] == 4 and record["budget"]["peak_tflops"] == 1307


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--hardware", "v4-33", "--hours", "1", "--mfu", "0.4"], "did you mean 'v4-32'"),
        (["--hardware", "tpu9", "--hours", "1", "--mfu", "0.4"], "unknown target 'tpu9'"),
        (
            ["--hardware", "h100-8", "--hours", "1", "--mfu", "0.4"],
            "GPUs are spelled COUNTxMODEL, as --target takes them: 8xh100",
        ),
        (["--hardware", "2xl40", "--hours", "1", "--mfu", "0.4"], "did you mean '2xl40s'"),
        (["--hardware", "v4-32", "--hours", "1", "--mfu", "45"], "fraction"),
        (["--hardware", "v4-32", "--hours", "1"], "needs an MFU"),
        (["--hours", "1", "--mfu", "0.4"], "needs --hardware"),
        (["--hardware", "v5p", "--hours", "1", "--mfu", "0.4"], "--chip-hours"),
        (["--flops", "1e20", "--hours", "2"], "give one budget"),
        (["--flops", "lots"], "must be a number"),
        ([], "give a budget"),
        (["--flops", "1e3"], "less than one step"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert plan.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and len(captured.err.strip().splitlines()) == 1


def test_a_run_prints_its_share_of_chinchilla():
    config = load_config(os.path.join(CONFIGS, "tiny.yml"))  # 300 steps × 16 × 256 tokens, 4,196,608 parameters
    line = budget.run_line(config)
    assert "300 steps × 4,096 tokens = 1.23M tokens" in line
    assert f"{100 * 300 * 4096 / (20 * 4_196_608):.1f}% of Chinchilla-optimal" in line  # 1.5%
