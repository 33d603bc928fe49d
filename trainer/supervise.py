"""`python -m trainer.supervise [--max-restarts N] -- COMMAND ...`: restart a crashing job (`trainer.run.supervise`)."""

import sys

from trainer.run.supervise import main

if __name__ == "__main__":
    sys.exit(main())
