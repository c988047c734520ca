"""Benchmarks for outbox-relay against a naive pass-through and Postfix (see runner.py)."""
