"""`python -m trainer.convert_from_hf --hf DIR --out RUN`: the import command (see `trainer.export.import_hf`)."""

import sys

from trainer.export.import_hf import main

if __name__ == "__main__":
    sys.exit(main())
