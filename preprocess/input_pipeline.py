"""The tf.data input pipeline: TFRecords + metadata.json -> batches of (images, labels).

Images are float32 RAW 0..255 RGB (the model normalises its own input per channel), labels int32.
Training streams are an endless sequence of epochs. Epoch `e` reads the shards in a shuffled order
with parallel interleaved reads, shuffles records with a seed derived from (seed, e), and draws each
record's augmentation from a stateless seed derived from (seed, e, index in epoch). So the stream is
a pure function of the seed, and a trainer resumes it exactly by skipping `position` raw records
(cheap: the skip happens before decoding) - the data position is just a count of records consumed.
ImageNet-style augmentation decodes only the sampled crop window of a JPEG (decode_and_crop_jpeg).

With `data_service` (tf.data service, `cli.py data-service`), decoding and augmentation run on the
service's workers: each epoch is one job whose files the dispatcher hands out one at a time
(ShardingPolicy.DYNAMIC), so every record is produced exactly once per epoch (at most once if a worker
dies mid-file). Record order then depends on worker timing; a record's augmentation is still a pure
function of (seed, epoch, shard, index in shard). Workers send uint8 batches (4x less traffic than
float32; the augmented pixels are rounded), the trainer rebatches them to `batch_size` and they stay
uint8 (the models cast their input).

Evaluation reads every record of a split exactly once, in order, keeping the last partial batch.
"""
from __future__ import annotations

import logging
import os
import warnings
from typing import Dict, Optional, Tuple

import tensorflow as tf

from revnet.common.errors import error_reason
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
SERVICE_FILES_PER_WORKER = 4   # shards each tf.data service worker reads at once
COMPRESSION = None             # tf.data service transfer: raw uint8 (augmented pixels hardly compress)

log = logging.getLogger(__name__)


def split_size(metadata: Dict, split: str) -> int:
    """Records in one split, counted from its shard list (the number the trainer and evaluator reconcile)."""
    return int(sum(shard["records"] for shard in metadata["splits"][split]["shards"]))


def decode_rgb(encoded):
    """JPEG/PNG bytes (a scalar string tensor) to float32 [H, W, 3] RGB in 0..255."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return tf.cast(image, tf.float32)


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


def _sample_crop(shape, seed):
    """Random-resized-crop box (begin, size) for an image of `shape`: 8%-100% of the area, aspect 3/4-4/3."""
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
        min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    return begin, crop_size


def _imagenet_train(image, size: int, seed):
    box_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    begin, crop_size = _sample_crop(tf.shape(image), box_seed)
    image = tf.slice(image, begin, crop_size)
    image = tf.image.resize(image, [size, size], method="bilinear")
    return tf.image.stateless_random_flip_left_right(image, flip_seed)


def _imagenet_train_encoded(encoded, image_format, size: int, seed):
    """`train_augment(decode_rgb(encoded), "imagenet", ...)` with the same crop box, but a JPEG is decoded
    only inside that box (the crop covers 8-100% of the image, so this skips much of the decoding)."""
    box_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))

    def crop_while_decoding():
        begin, crop_size = _sample_crop(tf.image.extract_jpeg_shape(encoded), box_seed)
        window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
        return tf.cast(tf.image.decode_and_crop_jpeg(encoded, window, channels=3), tf.float32)

    def decode_then_crop():
        image = decode_rgb(encoded)
        begin, crop_size = _sample_crop(tf.shape(image), box_seed)
        return tf.slice(image, begin, crop_size)

    image = tf.cond(tf.equal(image_format, "JPEG"), crop_while_decoding, decode_then_crop)
    image.set_shape([None, None, 3])
    image = tf.image.resize(image, [size, size], method="bilinear")
    return _finish(tf.image.stateless_random_flip_left_right(image, flip_seed), size)


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


def _augmenter(augmentation: str, image_size: int, label_offset: int):
    """`(serialized record, stateless seed) -> (augmented float32 image, label)` for the recipe."""
    def augment(record, seed):
        features = schema.parse_example(record)
        label = tf.cast(features[schema.LABEL] - label_offset, tf.int32)
        if augmentation == "imagenet":
            return _imagenet_train_encoded(features[schema.ENCODED], features[schema.FORMAT], image_size, seed), label
        return train_augment(decode_rgb(features[schema.ENCODED]), augmentation, image_size, seed), label
    return augment


def train_dataset(data_dir: str, metadata: Dict, *, augmentation: str, image_size: int, batch_size: int,
                  seed: int, position: int = 0, num_input_pipelines: int = 1, input_pipeline_id: int = 0,
                  deterministic: bool = True, shuffle_buffer: int = SHUFFLE_BUFFER,
                  data_service: Optional[str] = None, job_name: Optional[str] = None) -> tf.data.Dataset:
    """Endless augmented training batches of `batch_size`, starting `position` records into the stream.

    With several input pipelines (one per worker), pipeline i keeps every n-th record of the same
    global stream, so together they consume exactly the records a single pipeline would. With
    `data_service` ("grpc://HOST:PORT"), the records are decoded and augmented by the tf.data service
    (see the module docstring); several input pipelines then share each epoch's job (`job_name`).
    """
    files = schema.split_files(data_dir, metadata, "train")
    epoch_size = split_size(metadata, "train")
    augment = _augmenter(augmentation, image_size, int(metadata.get("label_offset") or 0))
    if data_service:
        return _service_train_dataset(files, epoch_size, augment, image_size, batch_size, seed, position,
                                      num_input_pipelines, min(epoch_size, shuffle_buffer), data_service, job_name)
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
        return augment(record, tf.random.experimental.stateless_fold_in(epoch_seed, index))

    dataset = (stream.map(decode_and_augment, num_parallel_calls=tf.data.AUTOTUNE)
               .batch(batch_size, drop_remainder=True)
               .prefetch(tf.data.AUTOTUNE))
    return dataset.with_options(_options(deterministic))


def _service_train_dataset(files, epoch_size: int, augment, image_size: int, batch_size: int, seed: int,
                           position: int, num_input_pipelines: int, buffer: int, service: str,
                           job_name: Optional[str]) -> tf.data.Dataset:
    service_api = tf.data.experimental.service
    file_names = tf.constant(files)
    element_spec = (tf.TensorSpec([None, image_size, image_size, 3], tf.uint8), tf.TensorSpec([None], tf.int32))

    def worker_epoch(epoch_index):
        """What the service's workers run for one epoch. Its source, range(number of files), is what
        DYNAMIC sharding splits: the dispatcher hands each file position to exactly one worker."""
        epoch_seed = tf.stack([tf.constant(seed, tf.int64), epoch_index])
        order = tf.argsort(tf.random.stateless_uniform([len(files)], seed=epoch_seed))

        def records(slot):
            shard = tf.cast(tf.gather(order, slot), tf.int64)
            return (tf.data.TFRecordDataset(tf.gather(file_names, shard)).enumerate()
                    .map(lambda index, record: (shard, index, record)))

        def decode_and_augment(shard, index, record):
            record_seed = tf.random.experimental.stateless_fold_in(
                tf.random.experimental.stateless_fold_in(epoch_seed, shard), index)
            image, label = augment(record, record_seed)
            return tf.cast(tf.round(image), tf.uint8), label

        dataset = (tf.data.Dataset.range(len(files))
                   .interleave(records, cycle_length=min(len(files), SERVICE_FILES_PER_WORKER),
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
                   .shuffle(buffer, seed=epoch_seed[1] * 7919 + seed)
                   .map(decode_and_augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
                   .batch(batch_size)      # a worker's last batch of an epoch may be short: the trainer rebatches
                   .prefetch(tf.data.AUTOTUNE))
        return dataset.with_options(_options(False))

    def service_epoch(epoch_index):
        # One registration per epoch (the epoch is baked into the registered graph); each read of the
        # returned dataset is a new job, unless several trainer hosts share it by name.
        with warnings.catch_warnings():  # register_dataset reads the options in graph mode; harmless here
            warnings.filterwarnings("ignore", message="To make it possible to preserve tf.data options")
            dataset_id = service_api.register_dataset(service, worker_epoch(epoch_index), compression=COMPRESSION)
        name = None if job_name is None else tf.strings.join([job_name, "-epoch-", tf.strings.as_string(epoch_index)])
        return service_api.from_dataset_id(service_api.ShardingPolicy.DYNAMIC, service, dataset_id,
                                           element_spec=element_spec, job_name=name)

    first_epoch, offset = divmod(int(position), epoch_size)
    head = service_epoch(tf.constant(first_epoch, tf.int64))
    if offset:
        # The order within an epoch is not reproducible, so a resumed epoch delivers the rest of its
        # count: it skips as many records as were consumed before, whichever they are.
        head = head.unbatch().skip(offset // num_input_pipelines).batch(batch_size)
    stream = head.concatenate(tf.data.Dataset.range(first_epoch + 1, 2 ** 62).flat_map(service_epoch))
    # Batches stay uint8: the models cast their input themselves (on a GPU host, on the GPU).
    dataset = stream.rebatch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return dataset.with_options(_options(False))


def find_damaged_shard(data_dir: str, metadata: Dict, split: str) -> Optional[Tuple[str, str]]:
    """(path, reason) of the first shard of `split` that does not read in full (TFRecord framing and
    CRCs) or whose record count differs from metadata.json; None when every shard reads."""
    for shard in metadata["splits"][split]["shards"]:
        path = os.path.join(data_dir, shard["file"])
        try:
            count = int(tf.data.TFRecordDataset(path).reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
        except tf.errors.OpError as error:
            return path, error_reason(error)
        if count != shard["records"]:
            return path, f"it holds {count} records but metadata.json lists {shard['records']}"
    return None


def eval_dataset(data_dir: str, metadata: Dict, split: str, *, preprocessing: str, image_size: int,
                 batch_size: int) -> tf.data.Dataset:
    """Every record of `split` exactly once, in shard order; the last batch may be smaller."""
    files = schema.split_files(data_dir, metadata, split)
    label_offset = int(metadata.get("label_offset") or 0)

    def decode(record):
        features = schema.parse_example(record)
        label = tf.cast(features[schema.LABEL] - label_offset, tf.int32)
        return eval_preprocess(decode_rgb(features[schema.ENCODED]), preprocessing, image_size), label

    dataset = (tf.data.TFRecordDataset(files, num_parallel_reads=min(len(files), MAX_PARALLEL_READS))
               .map(decode, num_parallel_calls=tf.data.AUTOTUNE)
               .batch(batch_size, drop_remainder=False)
               .prefetch(tf.data.AUTOTUNE))
    return dataset.with_options(_options(True))
