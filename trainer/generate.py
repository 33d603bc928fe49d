"""`python -m trainer.generate --checkpoint RUN[:STEP] --prompt TEXT`: the generation command (see
`trainer.infer.cli` and docs/generate.md)."""

import sys

from trainer.infer.cli import main

if __name__ == "__main__":
    sys.exit(main())
