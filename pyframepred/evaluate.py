"""``python -m pyframepred.evaluate``: the command line of :mod:`pyframepred.cli.evaluate`."""

import sys

from .cli.evaluate import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
