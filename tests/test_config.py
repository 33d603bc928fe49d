"""Config loading: includes, overrides, typed errors, and the CLI's one-line refusals (exit code 2)."""

import os
import subprocess
import sys

import pytest

from trainer.config import ConfigError, load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


def test_base_include_and_overrides():
    c = load_config(os.path.join(CONFIGS, "1b.yml"), ["train.steps=7", "optimizer.clip_norm=null", "model.scan_layers=false"])
    assert c.model.embed_dim == 1792 and c.model.rope_theta == 500000.0  # from 1b.yml
    assert c.optimizer.b2 == 0.95  # from base.yml
    assert c.train.steps == 7 and c.optimizer.clip_norm is None and c.model.scan_layers is False
    assert [m.weight for m in c.data.mixture] == [0.40, 0.25, 0.35]


def test_config_is_frozen():
    c = load_config(os.path.join(CONFIGS, "tiny.yml"))
    with pytest.raises(Exception):
        c.train.steps = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.num_hedas=4", "did you mean model.num_heads"),
        ("trian.steps=4", "did you mean train"),
        ("train.steps=ten", "train.steps must be an integer"),
        ("model.tie_embeddings=3", "model.tie_embeddings must be true or false"),
        ("model.attention=flash", "model.attention must be one of"),
        ("model.num_heads=3", "does not divide model.embed_dim"),
        ("model.num_kv_heads=3", "must divide model.num_heads"),
        ("train.seq_len=100000", "exceeds model.max_seq_len"),
        ("mesh.rules.batch=[data,pipeline]", "mesh axes are data, fsdp, tensor"),
        ("trainsteps", "must look like section.key=value"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(os.path.join(CONFIGS, "tiny.yml"), [override])


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "trainer.main", *args], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"},
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["configs/tiny.yml", "model.num_layrs=2"], "unknown config key model.num_layrs; did you mean model.num_layers?"),
        (["configs/tiny.yml", "train.global_batch_size=many"], "train.global_batch_size must be an integer"),
        (["configs/tiny.yml", "model.embed_dim=250"], "model.num_heads=4 does not divide model.embed_dim=250"),
        (["configs/tiny.yml", "model.num_kv_heads=3"], "model.num_kv_heads=3 must divide model.num_heads=4"),
        (["configs/tiny.yml", "mesh.fsdp=3"], "uses 3 devices per slice but 8 are present"),
        (["configs/tiny.yml", "train.global_batch_size=12"], "not divisible by the data-parallel size 8"),
        (["configs/missing.yml"], "config file not found"),
        (["configs/tiny.yml", "model.attention=splash"], "model.attention=splash needs a TPU but this run is on cpu"),
    ],
)
def test_cli_refuses_bad_configs_with_one_line(args, message):
    result = _cli(*args, "--dry-run")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert message in lines[0]
