"""Does every seed config fit the TPU slice it names? Compile each one's real train and eval steps for its target.

    python -m bench.tpu_fit [--configs configs/303m.yml ...] > fit.json

Each seed config names its target in a `# target: v4-32` comment line. Prints one JSON object:
{"configs": [{"config", "target", "hbm_peak_bytes", "hbm_capacity_bytes", "fits", "compile_s", ...}, ...]} and its
progress on stderr. Needs libtpu (`pip install -e ".[tpu]"`); one compile takes ~1-2 minutes of CPU per config.
"""

from __future__ import annotations

import argparse
import os
import re

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile only; before jax is imported

from bench.common import REPO, log, machine_info, print_json

SEEDS = ("303m.yml", "460m.yml", "1b.yml", "1.3b.yml")


def named_target(path: str) -> str | None:
    """The TPU type a config names in its `# target: NAME` comment."""
    with open(path) as f:
        found = re.search(r"^#\s*target:\s*(\S+)", f.read(), re.MULTILINE)
    return found.group(1) if found else None


def main() -> None:
    """Compile every config on its named target and print the per-config figures as one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="*", default=[os.path.join(REPO, "configs", n) for n in SEEDS])
    args = parser.parse_args()

    from trainer.config import load_config
    from trainer.fit.check import compile_fit, verdict
    from trainer.fit.targets import parse_target

    rows, machine = [], machine_info()
    for path in args.configs:
        name = named_target(path)
        if name is None:
            log(f"{path}: no '# target:' comment, skipped")
            continue
        fit = compile_fit(load_config(path), parse_target(name))
        log(f"{os.path.relpath(path, REPO)} on {name}: {verdict(fit)} ({fit.compile_s:.0f} s)")
        record = fit.record()
        rows.append({"config": os.path.relpath(path, REPO), "target": name,
                     "hbm_peak_bytes": record["hbm_peak_bytes"], "hbm_capacity_bytes": record["hbm_capacity_bytes"],
                     "fits": record["fits"], "compile_s": record["compile_s"],
                     "compile_cpu_s": record["compile_cpu_s"], "train_peak_bytes": record["train_peak_bytes"],
                     "eval_peak_bytes": record["eval_peak_bytes"], "mesh": record["mesh"]})
    print_json({"configs": rows, "machine": machine})


if __name__ == "__main__":
    main()
