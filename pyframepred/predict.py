"""``python -m pyframepred.predict``: the command line of :mod:`pyframepred.cli.predict`."""

import sys

from .cli.predict import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
