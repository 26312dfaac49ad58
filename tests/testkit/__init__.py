"""Helpers shared by the tests: running the CLI as a user does, the fidelity fixtures and the reference
forward pass, preprocess output readers, trainer subprocess plumbing and the serving attack payloads.

The tests import them as `testkit.<module>` (tests/conftest.py puts tests/ on the import path)."""
