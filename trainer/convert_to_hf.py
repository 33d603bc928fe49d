"""`python -m trainer.convert_to_hf --checkpoint RUN[:STEP] --out DIR`: the export command
(see `trainer.export.command`)."""

import sys

from trainer.export.command import main

if __name__ == "__main__":
    sys.exit(main())
