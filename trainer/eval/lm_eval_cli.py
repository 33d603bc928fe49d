"""`python -m trainer.eval.lm_eval_cli ARGS`: the `lm_eval` command itself, with our model registered as `trainer`.

lm-evaluation-harness finds models only in its own registry (it has no plugin entry points), so the stock
`lm_eval` script can't see ours; this runs the same CLI after registering it:

    python -m trainer.eval.lm_eval_cli --model trainer --model_args checkpoint=runs/tiny:300 --tasks hellaswag

Every `lm_eval` option works (`--include_path`, `--limit`, `--output_path`, `--log_samples`, …).
"""

from __future__ import annotations

import sys


def main() -> None:
    """Register `trainer`, then hand the command line to the harness's CLI."""
    from lm_eval.__main__ import cli_evaluate

    import trainer.eval.harness  # noqa: F401  (registers the `trainer` model)

    cli_evaluate()


if __name__ == "__main__":
    sys.exit(main())
