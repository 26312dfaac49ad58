"""The tf.data input pipeline: TFRecords + metadata.json -> batches of (images, labels).

Images are float32 RAW 0..255 RGB (the model normalises its own input per channel), labels int32.
Training streams are an endless sequence of epochs. Epoch `e` reads the shards in a shuffled order
with parallel interleaved reads, shuffles records with a seed derived from (seed, e), and draws each
record's augmentation from a stateless seed derived from (seed, e, index in epoch). So the stream is
a pure function of the seed, and a trainer resumes it exactly by skipping `position` raw records
(cheap: the skip happens before decoding) - the data position is just a count of records consumed.
Evaluation reads every record of a split exactly once, in order, keeping the last partial batch.
"""
from __future__ import annotations

from typing import Dict, Optional

import tensorflow as tf

from revnet.preprocess import schema

AUGMENTATIONS = ("cifar", "imagenet")
# Evaluation preprocessing (model config field `preprocessing`): "cifar" resizes to the square input only
# when the size differs; "imagenet" resizes the shorter side to size * 256/224, then centre-crops;
# "inception" is the original code's ImageNet evaluation: the central 87.5%, resized to the input.
EVAL_PREPROCESSING = ("cifar", "imagenet", "inception")
INCEPTION_CENTRAL_FRACTION = 0.875
CIFAR_PAD = 4
IMAGENET_RESIZE, IMAGENET_CROP = 256, 224
SHUFFLE_BUFFER = 10_000
MAX_PARALLEL_READS = 8


def split_size(metadata: Dict, split: str) -> int:
    """Records in one split, counted from its shard list (the number the trainer and evaluator reconcile)."""
    return int(sum(shard["records"] for shard in metadata["splits"][split]["shards"]))


def decode_rgb(encoded):
    """JPEG/PNG bytes (a scalar string tensor) to float32 [H, W, 3] RGB in 0..255."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return tf.cast(image, tf.float32)


def _decode(serialized, label_offset: int):
    features = schema.parse_example(serialized)
    label = tf.cast(features[schema.LABEL] - label_offset, tf.int32)
    return decode_rgb(features[schema.ENCODED]), label


def imagenet_resize_target(size: int) -> int:
    """The shorter side before the centre crop: 256 for a 224 input, the same ratio otherwise."""
    return int(round(size * IMAGENET_RESIZE / IMAGENET_CROP))


def _resize_if_needed(image, size: int):
    shape = tf.shape(image)
    return tf.cond(tf.logical_and(shape[0] == size, shape[1] == size), lambda: image,
                   lambda: tf.image.resize(image, [size, size], method="bilinear"))


def _cifar_train(image, size: int, seed):
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = _resize_if_needed(image, size)
    image = tf.pad(image, [[CIFAR_PAD, CIFAR_PAD], [CIFAR_PAD, CIFAR_PAD], [0, 0]])
    image = tf.image.stateless_random_crop(image, [size, size, 3], crop_seed)
    return tf.image.stateless_random_flip_left_right(image, flip_seed)


def _imagenet_train(image, size: int, seed):
    box_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=box_seed,
        min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, crop_size)
    image = tf.image.resize(image, [size, size], method="bilinear")
    return tf.image.stateless_random_flip_left_right(image, flip_seed)


def _imagenet_eval(image, size: int):
    """Resize the shorter side to 256 (for 224; same ratio otherwise), then center-crop `size`."""
    resize_to = imagenet_resize_target(size)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize_to / tf.reduce_min(shape)
    new_shape = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(image, new_shape, method="bilinear")
    return tf.image.resize_with_crop_or_pad(image, size, size)


def _inception_eval(image, size: int):
    """The original code's `eval_image` (from TF's Inception scripts): `central_crop(0.875)`, then TF1's
    `resize_bilinear` (align_corners=False and no half-pixel centres, unlike tf.image.resize)."""
    image = tf.image.central_crop(image, INCEPTION_CENTRAL_FRACTION)
    resized = tf.raw_ops.ResizeBilinear(images=image[tf.newaxis], size=[size, size], align_corners=False,
                                        half_pixel_centers=False)
    return resized[0]


def _finish(image, size: int):
    image = tf.clip_by_value(image, 0.0, 255.0)
    image.set_shape([size, size, 3])
    return image


def train_augment(image, augmentation: str, size: int, seed):
    """The recipe's training augmentation of one decoded image, drawn from a stateless `seed`."""
    augment = _cifar_train if augmentation == "cifar" else _imagenet_train
    return _finish(augment(image, size, seed), size)


def eval_preprocess(image, preprocessing: str, size: int):
    """The one evaluation preprocessing (the model config's `preprocessing` field), used by evaluation,
    the exported `predict_images` signature, and (re-implemented in numpy) the server."""
    if preprocessing == "cifar":
        return _finish(_resize_if_needed(image, size), size)
    if preprocessing == "inception":
        return _finish(_inception_eval(image, size), size)
    return _finish(_imagenet_eval(image, size), size)


def _options(deterministic: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    options.experimental_optimization.map_parallelization = True
    return options


def train_dataset(data_dir: str, metadata: Dict, *, augmentation: str, image_size: int, batch_size: int,
                  seed: int, position: int = 0, num_input_pipelines: int = 1, input_pipeline_id: int = 0,
                  deterministic: bool = True, shuffle_buffer: int = SHUFFLE_BUFFER) -> tf.data.Dataset:
    """Endless augmented training batches of `batch_size`, starting `position` records into the stream.

    With several input pipelines (one per worker), pipeline i keeps every n-th record of the same
    global stream, so together they consume exactly the records a single pipeline would.
    """
    files = schema.split_files(data_dir, metadata, "train")
    epoch_size = split_size(metadata, "train")
    label_offset = int(metadata.get("label_offset") or 0)
    first_epoch, offset = divmod(int(position), epoch_size)
    buffer = min(epoch_size, shuffle_buffer)
    cycle = min(len(files), MAX_PARALLEL_READS)
    file_names = tf.constant(files)

    def epoch(epoch_index):
        epoch_seed = tf.stack([tf.constant(seed, tf.int64), epoch_index])
        order_seed, record_seed = tf.unstack(tf.random.experimental.stateless_split(epoch_seed, 2)[:, 0])
        records = (tf.data.Dataset.from_tensor_slices(file_names)
                   .shuffle(len(files), seed=order_seed)
                   .interleave(tf.data.TFRecordDataset, cycle_length=cycle, block_length=1,
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                   .shuffle(buffer, seed=record_seed, reshuffle_each_iteration=False)
                   .enumerate())
        return records.map(lambda index, record: (epoch_seed, index, record))

    stream = tf.data.Dataset.range(first_epoch, 2 ** 62).flat_map(epoch).skip(offset)
    if num_input_pipelines > 1:
        stream = stream.shard(num_input_pipelines, input_pipeline_id)

    def decode_and_augment(epoch_seed, index, record):
        image, label = _decode(record, label_offset)
        record_seed = tf.random.experimental.stateless_fold_in(epoch_seed, index)
        return train_augment(image, augmentation, image_size, record_seed), label

    dataset = (stream.map(decode_and_augment, num_parallel_calls=tf.data.AUTOTUNE)
               .batch(batch_size, drop_remainder=True)
               .prefetch(tf.data.AUTOTUNE))
    return dataset.with_options(_options(deterministic))


def eval_dataset(data_dir: str, metadata: Dict, split: str, *, preprocessing: str, image_size: int,
                 batch_size: int) -> tf.data.Dataset:
    """Every record of `split` exactly once, in shard order; the last batch may be smaller."""
    files = schema.split_files(data_dir, metadata, split)
    label_offset = int(metadata.get("label_offset") or 0)

    def decode(record):
        image, label = _decode(record, label_offset)
        return eval_preprocess(image, preprocessing, image_size), label

    dataset = (tf.data.TFRecordDataset(files, num_parallel_reads=min(len(files), MAX_PARALLEL_READS))
               .map(decode, num_parallel_calls=tf.data.AUTOTUNE)
               .batch(batch_size, drop_remainder=False)
               .prefetch(tf.data.AUTOTUNE))
    return dataset.with_options(_options(True))
