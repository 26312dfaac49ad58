"""Session fixtures for the trainer tests: one short finished experiment that several tests read, on
the shared `toy_data` (tests/conftest.py)."""
import pytest


@pytest.fixture(scope="session")
def finished_experiment(toy_data, tmp_path_factory):
    """(workdir, id, summary) of a 4-step resnet-32 run with checkpoints at steps 2 and 4."""
    from revnet.train.trainer import run as train_run
    workdir = str(tmp_path_factory.mktemp("experiments"))
    summary = train_run(model="resnet-32", data=toy_data, id="done", workdir=workdir, steps=4, batch_size=8,
                        checkpoint_every=2, log_every=1, seed=5, progress=False)
    return workdir, "done", summary
