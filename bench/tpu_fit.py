"""Does every seed config fit the TPU slice it names, and the GPUs its seed trained on? Compile each one's real train
and eval steps for each target.

    python -m bench.tpu_fit [--configs configs/303m.yml ...] > fit.json

Each seed config names its TPU target in a `# target: v4-32` comment line, and may name GPUs with the overrides
they need in a `# gpu target: 2xl40s train.microbatches=16` line. Prints one JSON object:
{"configs": [{"config", "target", "overrides", "hbm_peak_bytes", "hbm_capacity_bytes", "fits", "compile_s", ...},
...]} and its progress on stderr. TPU rows need libtpu (`pip install -e ".[tpu]"`; ~1-2 minutes of CPU per config),
GPU rows the CUDA plugin (`pip install -e ".[gpu-compile]"`; ~10 s each); a row whose compiler is missing is skipped.
"""

from __future__ import annotations

import argparse
import os
import re

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile only; before jax is imported

from bench.common import REPO, log, machine_info, print_json

SEEDS = ("303m.yml", "460m.yml", "1b.yml", "1.3b.yml")


def named_targets(path: str) -> list[tuple[str, list[str]]]:
    """The targets a config names: its `# target: NAME` TPU slice, then each `# gpu target: NAME key=value ...`
    with the overrides it needs there."""
    with open(path) as f:
        text = f.read()
    found = [(m.group(1), []) for m in re.finditer(r"^#\s*target:\s*(\S+)", text, re.MULTILINE)]
    for m in re.finditer(r"^#\s*gpu target:\s*(\S+)((?:\s+[\w.]+=\S+)*)", text, re.MULTILINE):
        found.append((m.group(1), m.group(2).split()))
    return found


def main() -> None:
    """Compile every config on each named target and print the per-config figures as one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="*", default=[os.path.join(REPO, "configs", n) for n in SEEDS])
    args = parser.parse_args()

    from trainer.config import load_config
    from trainer.errors import ConfigError
    from trainer.target.check import compile_fit, resolve_target, verdict

    rows, machine = [], machine_info()
    for path in args.configs:
        targets = named_targets(path)
        if not targets:
            log(f"{path}: no '# target:' comment, skipped")
        for name, overrides in targets:
            try:
                target = resolve_target(name)
            except ConfigError as e:  # its compiler is not installed
                log(f"{os.path.relpath(path, REPO)} on {name}: skipped ({e})")
                continue
            fit = compile_fit(load_config(path, overrides), target, changes=tuple(overrides))
            log(
                f"{os.path.relpath(path, REPO)} on {' '.join([name, *overrides])}: {verdict(fit)} "
                f"({fit.compile_s:.0f} s)"
            )
            record = fit.record()
            rows.append(
                {
                    "config": os.path.relpath(path, REPO),
                    "target": name,
                    "overrides": overrides,
                    "hbm_peak_bytes": record["hbm_peak_bytes"],
                    "hbm_capacity_bytes": record["hbm_capacity_bytes"],
                    "fits": record["fits"],
                    "compile_s": record["compile_s"],
                    "compile_cpu_s": record["compile_cpu_s"],
                    "train_peak_bytes": record["train_peak_bytes"],
                    "eval_peak_bytes": record["eval_peak_bytes"],
                    "mesh": record["mesh"],
                }
            )
    print_json({"configs": rows, "machine": machine})


if __name__ == "__main__":
    main()
