"""Session fixtures for the trainer tests: a tiny learnable dataset in the official format (PNG
TFRecords + metadata.json) and one short finished experiment that several tests read."""
import pytest

NUM_CLASSES = 4


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    from revnet.preprocess.fake_data import write_toy_dataset

    path = str(tmp_path_factory.mktemp("toy_data"))
    write_toy_dataset(path, num_train=160, num_validation=37, num_classes=NUM_CLASSES, num_shards=2, seed=0)
    return path


@pytest.fixture(scope="session")
def finished_experiment(toy_data, tmp_path_factory):
    """(workdir, id, summary) of a 4-step resnet-32 run with checkpoints at steps 2 and 4."""
    from revnet.train.trainer import run as train_run
    workdir = str(tmp_path_factory.mktemp("experiments"))
    summary = train_run(model="resnet-32", data=toy_data, id="done", workdir=workdir, steps=4, batch_size=8,
                        checkpoint_every=2, log_every=1, seed=5, progress=False)
    return workdir, "done", summary
