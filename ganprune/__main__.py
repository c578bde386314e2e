"""``python -m ganprune ARGS`` is ``ganprune ARGS`` (NNI trials run this way)."""
import sys

from ganprune.cli import main

if __name__ == "__main__":
    sys.exit(main())
