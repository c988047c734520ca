"""Test suite; a package so that `python -m tests.corpus.evaluate` works from a checkout."""
