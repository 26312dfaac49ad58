"""Session fixture: every reference checkpoint imported once."""
import pytest

from testkit.fidelity_helpers import MODELS, import_fixture


@pytest.fixture(scope="session")
def imported(tmp_path_factory):
    """workdir holding every fixture imported under its own name (CIFAR with the fixtures' channel means)."""
    workdir = str(tmp_path_factory.mktemp("imported"))
    for name in MODELS:
        import_fixture(name, workdir)
    return workdir
