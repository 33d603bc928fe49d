"""One hardware table: the planner, the MFU of the step lines, the fit check and the launcher read the same chips,
peaks, memory and slice sizes from trainer/hardware.py, and trainer/ never imports launch/ (launch/ reads trainer/)."""

import re
import subprocess
import sys

import pytest

from launch.tpu_catalog import parse_accelerator
from trainer.hardware import CHIPS, TPU_GENERATIONS, parse_machine
from trainer.model import flops
from trainer.run import budget
from trainer.target.gpu import GPUS, parse_gpu_target
from trainer.target.tpu import parse_target


@pytest.mark.parametrize("name", ["v4-8", "v4-32", "v5e-16", "v5litepod-256", "v5p-128", "v6e-8"])
def test_a_tpu_slice_is_the_same_machine_to_the_launcher_the_fit_check_and_the_planner(name):
    acc, target, hw = parse_accelerator(name), parse_target(name), budget.parse_hardware(name)
    assert acc.name == target.name == hw.name == parse_machine(name).name
    assert acc.chips == target.chips_per_slice == hw.chips
    chip = CHIPS[acc.generation]
    assert hw.peak_tflops == chip.peak_bf16_tflops == flops.peak_tflops(chip.device)  # the step lines' MFU too
    assert target.hbm_bytes == TPU_GENERATIONS[acc.generation].compiler_hbm_bytes <= chip.memory_bytes


@pytest.mark.parametrize("model", sorted(GPUS))
def test_a_gpu_machine_is_the_same_to_the_fit_check_the_planner_and_the_step_lines(model):
    target, hw, chip = parse_gpu_target(f"2x{model}"), budget.parse_hardware(f"2x{model}"), CHIPS[model]
    assert target.name == hw.name == f"2x{model}" and target.chips == hw.chips == 2
    assert target.model.device == chip.device and target.model.memory_bytes == chip.memory_bytes
    assert hw.peak_tflops == chip.peak_bf16_tflops == flops.peak_tflops(target.model.device)


@pytest.mark.parametrize("chip", [c for c in CHIPS.values() if c.family == "gpu"], ids=lambda c: c.name)
def test_gpu_peaks_are_dense_half_the_sparse_figure_their_source_names(chip):
    sparse = re.search(r"([\d,.]+) sparse", chip.source)
    assert sparse, chip.source  # every GPU's source names the datasheet's headline (2:4 sparse) figure
    # within the datasheets' rounding (L40S: 362.05 dense, 733 sparse), far from a sparse figure taken for dense
    assert float(sparse.group(1).replace(",", "")) == pytest.approx(2 * chip.peak_bf16_tflops, rel=0.02)


def test_every_chip_has_a_source_memory_and_a_device_name_the_step_lines_recognise():
    for chip in CHIPS.values():
        assert chip.source and chip.memory_bytes > 0 and chip.peak_bf16_tflops > 0 and chip.interconnect
        assert flops.peak_tflops(chip.device) == chip.peak_bf16_tflops, chip.name
    assert flops.peak_tflops("cpu") is None


def test_trainer_does_not_import_the_launcher():
    code = (
        "import sys, trainer.plan, trainer.run.budget, trainer.target.check, trainer.model.flops, trainer.hardware; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'launch'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
