"""`--dry-run --target`: the real train and eval steps compiled by the TPU compiler (libtpu) for slices that are not
here, per-chip memory against the chip's HBM, the smallest change that fits, and the refusals around it."""

from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.config import load_config
from trainer.main import main
from trainer.target import tpu as targets
from trainer.target.tpu import parse_target

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "configs", "tiny.yml")
needs_libtpu = pytest.mark.skipif(
    targets.importlib.util.find_spec("libtpu") is None,
    reason='compiling for a TPU needs libtpu: pip install -e ".[tpu]"',
)


def _run(capsys, *argv: str) -> tuple[int, list[str], str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out.strip().splitlines(), out.err


@pytest.mark.parametrize(
    "name, topology, chips, config",
    [
        ("v4-8", "v4:2x2x1", 4, "megacore"),
        ("v4-32", "v4:2x2x4", 16, "megacore"),
        ("v4-4096", "v4:8x16x16", 2048, "megacore"),
        ("v5e-16", "v5e:4x4", 16, "default"),
        ("v5litepod-8", "v5e:2x4", 8, "default"),
        ("v5p-384", "v5:4x4x12", 192, "megacore"),
        ("v6e-256", "v6e:16x16", 256, "default"),
    ],
)
def test_gcloud_names_map_to_topologies(name, topology, chips, config):
    t = parse_target(name, slices=2)
    assert (t.topology, t.chips_per_slice, t.chip_config, t.chips) == (topology, chips, config, 2 * chips)


def test_unknown_tpu_type_is_one_line(capsys):
    code, out, err = _run(capsys, TINY, "--dry-run", "--target", "v4-31")
    assert code == 2 and out == [] and err.count("\n") == 1
    assert err.startswith("error: unknown accelerator 'v4-31'; did you mean 'v4-32'?")


def test_without_libtpu_names_the_extra(capsys, monkeypatch):
    real = targets.importlib.util.find_spec
    monkeypatch.setattr(targets.importlib.util, "find_spec", lambda n, *a: None if n == "libtpu" else real(n, *a))
    code, _, err = _run(capsys, TINY, "--dry-run", "--target", "v4-8")
    assert code == 2 and err == 'error: compiling for a TPU slice needs libtpu: pip install -e ".[tpu]"\n'


@needs_libtpu
def test_hbm_table_is_what_the_compiler_allows():
    """The per-chip capacity we report is the one the TPU compiler enforces (it names it when refusing)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    for name in ("v4-8", "v5e-4"):
        target = parse_target(name)
        devices = targets.topology_devices(target)
        sharding = NamedSharding(Mesh(np.array(devices), ("x",)), PartitionSpec("x"))
        too_big = jax.ShapeDtypeStruct((len(devices) * 2**20, 2**14), jnp.float32, sharding=sharding)
        with pytest.raises(jax.errors.JaxRuntimeError) as refused:
            jax.jit(lambda a: (a @ a.T).sum(), in_shardings=sharding).lower(too_big).compile()
        available = re.search(r"available HBM \(([\d.]+)G\)", str(refused.value)).group(1)
        assert abs(float(available) * 2**30 - target.hbm_bytes) < 2**20, (name, available)


SMALL = ["model.num_layers=2", "train.seq_len=256", "data.packing=true"]


@needs_libtpu
@pytest.mark.parametrize(
    "target, attention, extra",
    [
        ("v4-8", "dot_product", []),
        ("v4-8", "splash", ["mesh.tensor=2", "model.scan_layers=false", "model.remat_policy=none"]),
        ("v5e-4", "splash", ["model.remat_policy=full", "--slices", "2"]),
    ],
)
def test_compiles_the_real_step_and_reports_per_chip_memory(capsys, target, attention, extra):
    code, out, err = _run(capsys, TINY, "--dry-run", "--target", target, f"model.attention={attention}", *SMALL, *extra)
    assert code == 0, err
    record = json.loads(out[-1])
    assert record["target"] == parse_target(target).name and record["fits"] is True
    assert record["hbm_capacity_bytes"] == parse_target(target).hbm_bytes
    assert 0 < record["train_peak_bytes"] <= record["hbm_peak_bytes"] < record["hbm_capacity_bytes"]
    assert record["params_bytes"] > 0 and record["optimizer_bytes"] > record["params_bytes"]
    assert record["eval_peak_bytes"] > record["optimizer_bytes"]
    text = "\n".join(out)
    assert "compiled   train and eval steps with the TPU compiler" in text and "headroom" in text
    if "--slices" in extra:
        assert record["chips"] == 8 and record["mesh"]["data"] == 2 and "mesh.dcn_data=2" in text


def test_the_search_tries_the_smallest_changes_first():
    """More microbatches (while each still splits over the data-parallel devices), then full remat: no compiling."""
    from trainer.target.check import candidates

    config = load_config(TINY, ["train.global_batch_size=16", "train.microbatches=2"])
    assert [changes for changes, _ in candidates(config)] == [
        ("train.microbatches=4",),
        ("train.microbatches=8",),
        ("train.microbatches=16",),
        ("model.remat_policy=full",),
        ("train.microbatches=4", "model.remat_policy=full"),
        ("train.microbatches=8", "model.remat_policy=full"),
        ("train.microbatches=16", "model.remat_policy=full"),
    ]
    tried = dict(candidates(config))
    assert tried[("train.microbatches=8", "model.remat_policy=full")].train.microbatches == 8
    assert tried[("train.microbatches=8", "model.remat_policy=full")].model.remat_policy == "full"
    full = load_config(TINY, ["train.global_batch_size=12", "model.remat_policy=full"])
    assert [changes for changes, _ in candidates(full)] == [("train.microbatches=2",), ("train.microbatches=4",)]


@needs_libtpu
def test_not_fitting_names_the_smallest_change_that_fits(capsys):
    # 720k tokens per step through a one-layer model on one v5e chip (15.75 GiB): ~18 GiB, which the compiler
    # refuses at once; two microbatches (~12 GiB) compile with room to spare. The eval step goes over the same
    # microbatches (with it over the whole batch, no microbatch count fitted and the search compiled every candidate).
    code, out, err = _run(
        capsys,
        TINY,
        "--dry-run",
        "--target",
        "v5e-1",
        "train.global_batch_size=2816",
        "train.seq_len=256",
        "model.remat_policy=none",
        "model.num_layers=1",
    )
    assert code == 1, err
    verdict = next(line for line in out if line.startswith("does not fit"))
    found = re.fullmatch(
        r"does not fit: ([\d.]+) GiB > 15.75 GiB per chip; fits with "
        r"train\.microbatches=(\d+) \(([\d.]+) GiB\)",
        verdict,
    )
    assert found, verdict
    need, micro, then = float(found.group(1)), int(found.group(2)), float(found.group(3))
    assert need > 15.75 > then and micro >= 2
    tried = [line for line in out if line.startswith("tried")]
    assert tried[-1].startswith(f"tried      train.microbatches={micro}: fits")
    assert all("does not fit" in line for line in tried[:-1])  # each smaller change was compiled and refused
    record = json.loads(out[-1])
    assert record["fits"] is False and record["suggestion"]["changes"] == [f"train.microbatches={micro}"]
    assert record["suggestion"]["hbm_peak_bytes"] < record["hbm_capacity_bytes"] < record["hbm_peak_bytes"]


def test_uneven_sharding_is_reported_and_empty_shards_refused(capsys):
    one_b = os.path.join(REPO, "configs", "1b.yml")
    code, out, err = _run(capsys, one_b, "--dry-run", "--devices", "256", "mesh.tensor=4")
    assert code == 2 and err.count("\n") == 1 and "kv_heads (2) is split over 4 devices" in err
    code, out, err = _run(capsys, one_b, "--dry-run", "--devices", "256", "mesh.tensor=4", "mesh.rules.kv_heads=null")
    assert code == 0, err
    assert "uneven     heads 14 over tensor=4 → 16: 12% of the attention heads per device is padding" in out
    assert json.loads(out[-1])["uneven"]["heads"] == {"size": 14, "padded": 16, "axes": ["tensor"]}
    code, out, err = _run(capsys, one_b, "--dry-run", "--devices", "256", "mesh.tensor=2")  # the README's plan
    assert code == 0 and set(json.loads(out[-1])["uneven"]) == {"vocab"}


def test_plain_dry_run_says_its_figure_is_not_the_peak(capsys):
    code, out, _ = _run(capsys, TINY, "--dry-run")
    line = next(x for x in out if x.startswith("state "))
    assert code == 0 and "Not the peak" in line and "--target" in line


def test_splash_matches_dot_product_on_a_cpu_mesh_with_a_batch_of_one():
    """The kernel's own interpreter on 8 CPU devices: batch 1 (init, sampling) and a head split that the kv heads
    don't follow still give dot-product attention's values and gradients, packed segments included."""
    from trainer import sharding
    from trainer.model.attention import dot_product_attention, splash_attention

    config = load_config(TINY, ["mesh.fsdp=2", "mesh.tensor=4", "mesh.rules.kv_heads=null"])
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((1, 128, h, 16)), jnp.float32) for h in (4, 2, 2))
    segments = jnp.asarray([[1] * 50 + [2] * 78], jnp.int32)

    def loss(fn):
        return lambda q, k, v: (fn(q, k, v, segments) ** 2).sum()

    def splash(q, k, v, s):
        return splash_attention(q, k, v, s, interpret=True)

    with sharding.activate(sharding.make_mesh(config.mesh), config):
        out = jax.jit(splash)(q, k, v, segments)
        grads = jax.jit(jax.grad(loss(splash), argnums=(0, 1, 2)))(q, k, v)
    np.testing.assert_allclose(out, dot_product_attention(q, k, v, segments), atol=1e-5)
    for got, want in zip(grads, jax.grad(loss(dot_product_attention), argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_every_seed_names_targets_that_parse():
    """The `# target:` / `# gpu target:` comments bench.tpu_fit compiles: known names, overrides the config takes."""
    from bench.tpu_fit import SEEDS, named_targets
    from trainer.target.gpu import is_gpu_target, parse_gpu_target

    for seed in SEEDS:
        path = os.path.join(REPO, "configs", seed)
        targets = named_targets(path)
        assert targets and not is_gpu_target(targets[0][0]), seed  # a TPU slice first
        for name, overrides in targets:
            (parse_gpu_target if is_gpu_target(name) else parse_target)(name)
            load_config(path, overrides)
    assert ("2xl40s", ["train.microbatches=16"]) in named_targets(os.path.join(REPO, "configs", "1.3b.yml"))
