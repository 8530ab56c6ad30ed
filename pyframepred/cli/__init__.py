"""The command lines: ``python -m pyframepred.train | evaluate | predict``.

Each parses its arguments, calls the library, and maps the library's exceptions
(:mod:`pyframepred.errors`) to a one-line ``error: ...`` message -- the settings named there as
their ``--flags`` -- and an exit status. Nothing in the library imports from here.
"""
