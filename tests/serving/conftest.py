"""Session fixtures: a tiny "trained" experiment (random init, in the trainer's folder contract), a tiny
validation dataset in the pipeline's TFRecord format, and one export of both formats."""
import os

import numpy as np
import pytest

LABELS = ["cat", "dog", "ship"]
NUM_IMAGES = 8


def make_dataset(data_dir: str):
    """A validation split of PNG/JPEG 32x32 images, written exactly as `pipeline/` would."""
    from revnet.preprocess.fake_data import write_mixed_format_split

    return write_mixed_format_split(data_dir, LABELS, NUM_IMAGES)


def make_experiment(workdir: str, exp_id: str, data_dir: str):
    import tensorflow as tf

    from revnet.models import build_model
    from revnet.train.train_config import DataConfig
    from revnet.train.experiment import create_experiment

    model = build_model("revnet-38", num_classes=len(LABELS), seed=3)
    # A few training-mode calls move the BN statistics away from their initial values, so the export
    # is only right if it really uses the moving statistics.
    rng = np.random.RandomState(2)
    for _ in range(2):
        model(tf.constant(rng.uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)), training=True)
    create_experiment(workdir, exp_id, model, DataConfig(dir=data_dir, dataset="cifar-10", label_names=tuple(LABELS),
                                                         validation_examples=NUM_IMAGES))
    return model


@pytest.fixture(scope="session")
def serving_env(tmp_path_factory):
    """dict(workdir, exp_id, data_dir, images, labels, output, record, model_dir) after one `export --format all`."""
    from revnet.serving.exporter import export

    root = tmp_path_factory.mktemp("serving")
    data_dir, workdir, output = str(root / "data"), str(root / "experiments"), str(root / "exports")
    encoded, labels = make_dataset(data_dir)
    model = make_experiment(workdir, "exp1", data_dir)
    record = export(exp_id="exp1", workdir=workdir, output=output, format="all", name="revnet")
    return {"workdir": workdir, "exp_id": "exp1", "data_dir": data_dir, "encoded": encoded, "labels": labels,
            "output": output, "record": record, "model_dir": os.path.join(output, "revnet"), "model": model}
