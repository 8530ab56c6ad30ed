"""``python -m pyframepred.train``: the command line of :mod:`pyframepred.cli.train`."""

import sys

from .cli.train import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
