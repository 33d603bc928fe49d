"""Config loading: includes, overrides, typed errors, and the CLI's one-line refusals (exit code 2)."""

import dataclasses
import os
import subprocess
import sys

import pytest

from trainer.config import ConfigError, load_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "configs")


def test_base_include_and_overrides():
    c = load_config(
        os.path.join(CONFIGS, "1b.yml"), ["train.steps=7", "optimizer.clip_norm=null", "model.scan_layers=false"]
    )
    assert c.model.embed_dim == 1792 and c.model.rope_theta == 500000.0  # from 1b.yml
    assert c.optimizer.b2 == 0.95  # from base.yml
    assert c.train.steps == 7 and c.optimizer.clip_norm is None and c.model.scan_layers is False
    assert [m.weight for m in c.data.mixture] == [0.40, 0.25, 0.35]


def test_config_is_frozen():
    c = load_config(os.path.join(CONFIGS, "tiny.yml"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.train.steps = 3  # type: ignore[misc]


def test_splash_needs_a_sequence_its_blocks_divide():
    with pytest.raises(ConfigError, match=r"splash needs train.seq_len a multiple of 128 .*got 200: use 256 or"):
        load_config(os.path.join(CONFIGS, "tiny.yml"), ["model.attention=splash", "train.seq_len=200"])
    assert load_config(os.path.join(CONFIGS, "tiny.yml"), ["model.attention=splash", "train.seq_len=128"])


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
        [sys.executable, "-m", "trainer.main", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"},
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["configs/tiny.yml", "model.num_layrs=2"],
            "unknown config key model.num_layrs; did you mean model.num_layers?",
        ),
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


def _differences(defaults: object, written: object, key: str) -> list[str]:
    """Where base.yml (`written`) and the dataclass defaults disagree: a missing or extra key, a value or a type."""
    if isinstance(defaults, dict) and key != "mesh.rules":
        if not isinstance(written, dict):
            return [f"{key}: a section in the dataclasses, {written!r} in base.yml"]
        out = [f"{key}.{k}: missing from base.yml" for k in defaults.keys() - written.keys()]
        out += [f"{key}.{k}: not a config key" for k in written.keys() - defaults.keys()]
        for k in defaults.keys() & written.keys():
            out += _differences(defaults[k], written[k], f"{key}.{k}".lstrip("."))
        return out
    if defaults != written or (defaults is not None and type(defaults) is not type(written)):
        return [
            f"{key}: default {defaults!r} ({type(defaults).__name__}), base.yml {written!r} ({type(written).__name__})"
        ]
    return []


def test_base_yml_is_the_dataclasses_twin():
    """configs/base.yml documents every key with its default: it must hold exactly the dataclasses' keys and values."""
    import yaml

    from trainer.config import Config

    with open(os.path.join(CONFIGS, "base.yml")) as f:
        written = yaml.safe_load(f)
    assert _differences(Config().to_dict(), written, "") == []
    assert _differences({"a": 1, "b": 2.0}, {"a": 1.0, "c": 2.0}, "") != []  # the comparison itself can fail


def test_renamed_key_is_read_with_a_note(tmp_path, capsys):
    path = tmp_path / "old.yml"
    path.write_text(f"base: {os.path.join(CONFIGS, 'tiny.yml')}\ndata:\n  shards: 4\n")
    assert load_config(str(path)).data.streams == 4
    assert "data.shards is now data.streams" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="set only data.streams"):
        load_config(str(path), ["data.streams=8"])
