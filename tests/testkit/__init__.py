"""Helpers shared by the tests: running the CLI as a user does, the fidelity fixtures and the reference
forward pass, preprocess output readers, trainer subprocess plumbing, and the serving attack payloads and
raw-HTTP tools.

The tests import them as `testkit.<module>`: pytest puts tests/, the folder of the root conftest.py, on
the import path."""
