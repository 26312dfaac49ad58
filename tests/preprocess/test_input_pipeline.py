"""The tf.data reader: deterministic seeded order, exact resume by position, full-split evaluation,
augmentation shapes and ranges, on tiny PNG TFRecords in the official folder format."""
import numpy as np
import pytest

from revnet.preprocess import input_pipeline
from revnet.preprocess.schema import load_metadata

NUM_TRAIN, NUM_VALIDATION = 60, 23


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from revnet.preprocess.fake_data import write_toy_dataset

    path = str(tmp_path_factory.mktemp("pipeline_data"))
    write_toy_dataset(path, num_train=NUM_TRAIN, num_validation=NUM_VALIDATION, num_classes=3, num_shards=3, seed=1)
    return path, load_metadata(path)


def _train(data, **kwargs):
    path, metadata = data
    options = dict(augmentation="cifar", image_size=32, batch_size=8, seed=7)
    options.update(kwargs)
    return input_pipeline.train_dataset(path, metadata, **options)


def _take(dataset, count):
    batches = list(dataset.take(count))
    return np.concatenate([b[0].numpy() for b in batches]), np.concatenate([b[1].numpy() for b in batches])


def test_same_seed_same_stream_and_other_seed_other_order(data):
    images_a, labels_a = _take(_train(data), 10)      # 80 records: crosses an epoch boundary
    images_b, labels_b = _take(_train(data), 10)
    np.testing.assert_array_equal(images_a, images_b)
    np.testing.assert_array_equal(labels_a, labels_b)
    _, labels_other = _take(_train(data, seed=8), 10)
    assert not np.array_equal(labels_a, labels_other)


def test_resuming_at_a_position_continues_the_same_stream(data):
    images, labels = _take(_train(data), 12)
    resumed_images, resumed_labels = _take(_train(data, position=8 * 9), 3)   # position inside epoch 2
    np.testing.assert_array_equal(resumed_labels, labels[72:96])
    np.testing.assert_array_equal(resumed_images, images[72:96])


def test_each_epoch_sees_every_record_once(data):
    _, labels = _take(_train(data, batch_size=NUM_TRAIN // 2), 2)
    _, metadata = data
    assert len(labels) == NUM_TRAIN
    # toy labels are balanced: each class appears NUM_TRAIN / 3 times in one epoch.
    assert np.bincount(labels).tolist() == [NUM_TRAIN // 3] * 3


def test_input_pipelines_split_the_same_global_stream(data):
    _, labels = _take(_train(data, batch_size=4), 4)
    _, first = _take(_train(data, batch_size=2, num_input_pipelines=2, input_pipeline_id=0), 4)
    _, second = _take(_train(data, batch_size=2, num_input_pipelines=2, input_pipeline_id=1), 4)
    np.testing.assert_array_equal(first, labels[0::2])
    np.testing.assert_array_equal(second, labels[1::2])


def test_cifar_augmentation_is_raw_pixels_with_pad_crop_flip(data):
    path, metadata = data
    images, _ = _take(_train(data), 2)
    assert images.shape == (16, 32, 32, 3) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 255 and images.max() > 1.5   # not normalised
    evaluation = next(iter(input_pipeline.eval_dataset(path, metadata, "train", preprocessing="cifar",
                                                       image_size=32, batch_size=NUM_TRAIN)))[0].numpy()
    # Zero padding shows up as black rows/columns in some crops; unaugmented images have none.
    assert (images.reshape(16, -1, 3).max(axis=-1) == 0).any()
    assert not (evaluation.reshape(NUM_TRAIN, -1, 3).max(axis=-1) == 0).any()


def test_eval_counts_every_example_exactly_once_with_a_partial_last_batch(data):
    path, metadata = data
    dataset = input_pipeline.eval_dataset(path, metadata, "validation", preprocessing="cifar", image_size=32,
                                          batch_size=10)
    sizes = [int(labels.shape[0]) for _, labels in dataset]
    assert sizes == [10, 10, 3]


def test_imagenet_train_and_eval_sizes(data):
    path, metadata = data
    images, _ = _take(_train(data, augmentation="imagenet", image_size=48), 1)
    assert images.shape == (8, 48, 48, 3)
    evaluation = next(iter(input_pipeline.eval_dataset(path, metadata, "validation", preprocessing="imagenet",
                                                       image_size=48, batch_size=5)))[0]
    assert evaluation.shape == (5, 48, 48, 3)
