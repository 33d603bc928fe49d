"""trainer.cpu_tuning: the CPU family is read from /proc/cpuinfo, the measured XLA:CPU flags are added before the
backend starts, a flag the user set wins, and TRAINER_CPU_TUNING=0 turns it all off."""

from __future__ import annotations

import platform

import pytest

from trainer import cpu_tuning

ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9B14
flags\t\t: fpu avx2 avx512f avx512_bf16

processor\t: 1
vendor_id\t: GenuineIntel
"""
XEON = """vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu avx2 avx512f amx_bf16
"""


@pytest.mark.parametrize(
    "text, name, family, family_name",
    [
        (ZEN4, "AMD EPYC 9B14", 25, "zen4"),
        (XEON, "Intel(R) Xeon(R) Processor", 6, "intel-amx"),
        ("vendor_id\t: AuthenticAMD\ncpu family\t: 26\n", "", 26, "zen5"),
    ],
)
def test_first_processor_is_read(tmp_path, text, name, family, family_name):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    info = cpu_tuning.detect(str(path))
    assert (info.name, info.family, info.family_name) == (name, family, family_name)


def test_unreadable_cpuinfo_changes_nothing(tmp_path):
    info = cpu_tuning.detect(str(tmp_path / "missing"))
    assert info.vendor == "" and cpu_tuning.choose(info).xla_flags == ()


def test_flag_is_added_once_and_the_users_own_value_wins():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert cpu_tuning.add_xla_flags((cpu_tuning.YNN_NO_REDUCE,), env) == [cpu_tuning.YNN_NO_REDUCE]
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {cpu_tuning.YNN_NO_REDUCE}"
    assert cpu_tuning.add_xla_flags((cpu_tuning.YNN_NO_REDUCE,), env) == []  # already there: not twice
    mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=eltwise"}
    cpu_tuning.add_xla_flags((cpu_tuning.YNN_NO_REDUCE,), mine)
    assert mine == {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=eltwise"}


def test_the_flag_is_chosen_for_jax_0_10_on_x86_only(monkeypatch, tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(XEON)
    xeon = cpu_tuning.detect(str(path))
    monkeypatch.setattr(cpu_tuning.platform, "machine", lambda: "x86_64")
    assert cpu_tuning.choose(xeon, (0, 10)).xla_flags == (cpu_tuning.YNN_NO_REDUCE,)
    assert cpu_tuning.choose(xeon, (0, 12)).xla_flags == ()  # jax ≥ 0.11: the flag measured slower
    monkeypatch.setattr(cpu_tuning.platform, "machine", lambda: "aarch64")
    assert cpu_tuning.choose(xeon, (0, 10)).xla_flags == ()


def test_apply_says_what_it_chose_and_can_be_turned_off():
    env: dict[str, str] = {}
    line = cpu_tuning.apply(env)
    assert line.startswith("cpu: ") and line.endswith("[TRAINER_CPU_TUNING=0: off]")
    assert f"jax {'.'.join(map(str, cpu_tuning.jax_version()))}" in line
    if platform.machine() == "x86_64" and cpu_tuning.jax_version() < (0, 11):
        assert env["XLA_FLAGS"] == cpu_tuning.YNN_NO_REDUCE and cpu_tuning.YNN_NO_REDUCE in line
    off = {"TRAINER_CPU_TUNING": "0", "XLA_FLAGS": "--x=1"}
    assert cpu_tuning.apply(off) is None and off["XLA_FLAGS"] == "--x=1"
