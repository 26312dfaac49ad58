"""The official CIFAR-10/100 python archives: safe reading, validation, download, and writing.

The batches are Python pickles, and unpickling runs whatever callables a file names. They are loaded
with a restricted unpickler that admits only the numpy reconstruction functions and plain builtins
those files hold, so a hostile archive is refused before anything in it runs.
"""
from __future__ import annotations

import _compat_pickle
import hashlib
import io
import logging
import os
import pickle
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from revnet.common import storage
from revnet.common.errors import UserError
from revnet.common.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

IMAGE_SIZE = 32
ROW_BYTES = IMAGE_SIZE * IMAGE_SIZE * 3


@dataclass(frozen=True)
class CifarSpec:
    archive: str
    folder: str
    url: str
    md5: str
    train_files: Tuple[str, ...]
    test_files: Tuple[str, ...]
    meta_file: str
    label_keys: Tuple[str, ...]  # the label lists in each batch, first is the default label


SPECS: Dict[str, CifarSpec] = {
    "cifar-10": CifarSpec("cifar-10-python.tar.gz", "cifar-10-batches-py",
                          "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                          tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta",
                          ("labels",)),
    "cifar-100": CifarSpec("cifar-100-python.tar.gz", "cifar-100-python",
                           "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                           "eb9058c3a382ffc7106e4002c42a8d85",
                           ("train",), ("test",), "meta", ("fine_labels", "coarse_labels")),
}


def split_members(spec: CifarSpec) -> Dict[str, Tuple[str, ...]]:
    return {"train": spec.train_files, "validation": spec.test_files}


# ------------------------------------------------------------------------------------------------
# Restricted unpickling
# ------------------------------------------------------------------------------------------------
_ALLOWED_GLOBALS = {
    # numpy arrays pickle as _reconstruct(ndarray, ...) + dtype; numpy 2 moved numpy.core to numpy._core.
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    # Protocol-2 pickles written by Python 3 spell bytes as _codecs.encode(str, "latin1").
    ("_codecs", "encode"),
} | {("builtins", name) for name in ("bytes", "bytearray", "str", "int", "float", "complex", "bool", "list",
                                      "tuple", "dict", "set", "frozenset")}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        # Protocol-2 pickles name Python 2 modules (an empty bytes is `__builtin__.bytes()`); map them the
        # way pickle itself would before checking, so the check sees the names that would be loaded.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def safe_loads(data: bytes, source: str):
    """Unpickle a CIFAR batch, allowing only numpy arrays and plain data; a UserError otherwise."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as error:
        raise UserError(f"{source} is not a plain CIFAR pickle ({error}); refusing to load it") from None
    except Exception as error:  # noqa: BLE001 - any malformed pickle is bad input
        raise UserError(f"{source} is not a readable CIFAR pickle ({type(error).__name__}: {error})") from None


# ------------------------------------------------------------------------------------------------
# Reading an archive or its extracted folder
# ------------------------------------------------------------------------------------------------
def _folder_root(input_path: str, spec: CifarSpec) -> str:
    nested = storage.join(input_path, spec.folder)
    return nested if storage.is_dir(nested) else input_path


def check_input(dataset: str, input_path: Optional[str]) -> None:
    """A UserError if a given local `input_path` does not exist (cheap: before the job starts)."""
    spec = SPECS[dataset]
    if input_path and not storage.is_remote(input_path) and not os.path.exists(input_path):
        raise UserError(f"input {input_path!r} does not exist; expected the official {spec.archive} "
                        f"or its extracted {spec.folder}/ folder")


def read_members(input_path: str, spec: CifarSpec, names: Sequence[str]) -> Dict[str, bytes]:
    """The raw bytes of the named files, from the .tar.gz archive or its extracted folder."""
    wanted = set(names)
    found: Dict[str, bytes] = {}
    if storage.is_dir(input_path):
        root = _folder_root(input_path, spec)
        for name in names:
            path = storage.join(root, name)
            if storage.is_file(path):
                found[name] = storage.read_bytes(path)
    else:
        check_input(next(name for name, known in SPECS.items() if known is spec), input_path)
        try:
            with storage.open_read(input_path) as raw, tarfile.open(fileobj=raw, mode="r|*") as archive:
                for member in archive:
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in wanted and member.name.startswith(spec.folder + "/"):
                        found[base] = archive.extractfile(member).read()
                        if len(found) == len(wanted):
                            break
        except (tarfile.TarError, EOFError, OSError, Exception) as error:  # noqa: BLE001 - bad archive
            if isinstance(error, UserError):
                raise
            raise UserError(f"{input_path} is not a readable {spec.archive} archive ({error})") from None
    missing = [name for name in names if name not in found]
    if missing:
        raise UserError(f"{input_path} lacks {spec.folder}/{missing[0]}; expected the official {spec.archive} "
                        f"(with {', '.join(names)}) or its extracted folder")
    return found


def parse_batch(data: bytes, spec: CifarSpec, source: str, num_classes: Dict[str, int]) -> Dict[str, object]:
    """A validated batch: data uint8 [N, 3072], one int label list per key, filenames [N]."""
    batch = safe_loads(data, source)
    if not isinstance(batch, dict) or b"data" not in batch:
        raise UserError(f"{source} is not a CIFAR batch (a dict with b'data'); got {type(batch).__name__}")
    pixels = np.asarray(batch[b"data"])
    if pixels.ndim != 2 or pixels.shape[1] != ROW_BYTES or pixels.dtype != np.uint8:
        raise UserError(f"{source}: b'data' has shape {pixels.shape} and dtype {pixels.dtype}; "
                        f"expected uint8 N x {ROW_BYTES} (channel-planar 32x32 RGB)")
    count = pixels.shape[0]
    if count == 0:
        raise UserError(f"{source} holds 0 images; every batch of the official archive holds images, so the "
                        f"archive is truncated or was built wrongly")
    result: Dict[str, object] = {"data": pixels}
    for key in spec.label_keys:
        labels = batch.get(key.encode())
        if labels is None or len(labels) != count:
            raise UserError(f"{source}: b'{key}' is missing or does not have {count} entries")
        result[key] = _integer_labels(labels, source, key, num_classes[key])
    filenames = batch.get(b"filenames")
    if filenames is None or len(filenames) != count:
        raise UserError(f"{source}: b'filenames' is missing or does not have {count} entries")
    result["filenames"] = [f.decode("utf-8", "replace") if isinstance(f, bytes) else str(f) for f in filenames]
    return result


def _integer_labels(labels, source: str, key: str, num_classes: int) -> np.ndarray:
    """The labels as int64, refusing anything that is not an integer in 0..num_classes-1 (1.9 or "3"
    would otherwise be cast silently to 1 or 3)."""
    array = np.asarray(labels, dtype=object if not isinstance(labels, np.ndarray) else None)
    if array.ndim != 1:
        raise UserError(f"{source}: b'{key}' must be a flat list of integer labels, got shape {array.shape}")
    if array.dtype == object:
        bad = [value for value in array.tolist()
               if isinstance(value, bool) or not isinstance(value, (int, np.integer))]
    else:
        bad = array[:1].tolist() if array.dtype.kind not in "iu" else []
    if bad:
        raise UserError(f"{source}: b'{key}' holds {bad[0]!r} ({type(bad[0]).__name__}); labels must be integers "
                        f"in 0..{num_classes - 1}")
    if min(array.tolist()) < 0 or max(array.tolist()) >= num_classes:
        raise UserError(f"{source}: b'{key}' holds values outside 0..{num_classes - 1}")
    return array.astype(np.int64)


def parse_meta(data: bytes, spec: CifarSpec, source: str) -> Dict[str, List[str]]:
    """Label names per label key, e.g. {"labels": [...]} or {"fine_labels": [...], "coarse_labels": [...]}."""
    meta = safe_loads(data, source)
    names = {}
    for key in spec.label_keys:
        meta_key = "label_names" if key == "labels" else key[:-1] + "_names"
        values = meta.get(meta_key.encode()) if isinstance(meta, dict) else None
        if not values:
            raise UserError(f"{source} has no b'{meta_key}'; expected the official CIFAR metadata file")
        names[key] = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
    return names


def planar_to_hwc(rows: np.ndarray) -> np.ndarray:
    """[N, 3072] channel-planar rows (all R, then G, then B, each row-major) to uint8 [N, 32, 32, 3]."""
    return rows.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)


def iter_batch(batch: Dict[str, object]) -> Iterator[Tuple[int, str, np.ndarray, Dict[str, int]]]:
    """(index, filename, pixels [32, 32, 3], {label key: value}) for each image of a parsed batch."""
    images = planar_to_hwc(batch["data"])
    label_keys = [k for k in batch if k not in ("data", "filenames")]
    for index, filename in enumerate(batch["filenames"]):
        yield index, filename, images[index], {k: int(batch[k][index]) for k in label_keys}


# ------------------------------------------------------------------------------------------------
# Download (only when no --input is given)
# ------------------------------------------------------------------------------------------------
def md5_of(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(dataset: str, download_dir: str) -> str:
    """Fetch the official archive into `download_dir` (reused if already there) and check its MD5."""
    spec = SPECS[dataset]
    path = os.path.join(download_dir, spec.archive)
    if os.path.exists(path) and md5_of(path) == spec.md5:
        log.info("using the cached %s", path)
        return path
    log.info("downloading %s to %s", spec.url, path)
    try:
        with urllib.request.urlopen(spec.url, timeout=60) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as error:
        raise UserError(f"cannot download {spec.url} ({getattr(error, 'reason', error)}); when offline, "
                        f"pass --input with the official {spec.archive} or its extracted folder") from None
    actual = hashlib.md5(data).hexdigest()
    if actual != spec.md5:
        raise UserError(f"downloaded {spec.archive} has MD5 {actual}, expected the published {spec.md5}; "
                        f"not using it")
    atomic_write_bytes(path, data)
    return path


# ------------------------------------------------------------------------------------------------
# Writing genuine archives (demo data and test fixtures)
# ------------------------------------------------------------------------------------------------
def _pickle(obj) -> bytes:
    # Protocol 2 like the official (Python 2 era) files; they are read back with encoding="bytes".
    return pickle.dumps(obj, protocol=2)


def _batch(images: np.ndarray, labels: Dict[bytes, np.ndarray], batch_label: str, prefix: str, start: int):
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"images must be uint8 [N, 32, 32, 3], got {images.dtype} {images.shape}")
    batch = {b"batch_label": batch_label.encode(),
             b"data": np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), ROW_BYTES)),
             b"filenames": [f"{prefix}_s_{start + i:06d}.png".encode() for i in range(len(images))]}
    batch.update({key: [int(v) for v in values] for key, values in labels.items()})
    return batch


def _write_tar_gz(path: str, folder: str, files: Dict[str, bytes]) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            archive.addfile(info, io.BytesIO(data))
    atomic_write_bytes(path, buffer.getvalue())


def write_cifar10_archive(path: str, train_images: np.ndarray, train_labels, test_images: np.ndarray,
                          test_labels, label_names: Sequence[str], num_train_batches: int = 5) -> str:
    """Write a genuine cifar-10-python.tar.gz (images uint8 [N, 32, 32, 3]) in the official layout:
    cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta."""
    train_labels = np.asarray(train_labels)
    files: Dict[str, bytes] = {}
    bounds = np.linspace(0, len(train_images), num_train_batches + 1).astype(int)
    for i in range(num_train_batches):
        lo, hi = bounds[i], bounds[i + 1]
        files[f"data_batch_{i + 1}"] = _pickle(_batch(train_images[lo:hi], {b"labels": train_labels[lo:hi]},
                                                      f"training batch {i + 1} of {num_train_batches}", "train", lo))
    files["test_batch"] = _pickle(_batch(test_images, {b"labels": np.asarray(test_labels)},
                                         "testing batch 1 of 1", "test", 0))
    files["batches.meta"] = _pickle({b"label_names": [n.encode() for n in label_names],
                                     b"num_cases_per_batch": int(bounds[1] - bounds[0]), b"num_vis": ROW_BYTES})
    _write_tar_gz(path, SPECS["cifar-10"].folder, files)
    return path


def write_cifar100_archive(path: str, train_images: np.ndarray, train_fine, train_coarse, test_images: np.ndarray,
                           test_fine, test_coarse, fine_names: Sequence[str], coarse_names: Sequence[str]) -> str:
    """Write a genuine cifar-100-python.tar.gz in the official layout: cifar-100-python/train, test, meta."""
    files = {
        "train": _pickle(_batch(train_images, {b"fine_labels": np.asarray(train_fine),
                                               b"coarse_labels": np.asarray(train_coarse)}, "training batch 1 of 1",
                                "train", 0)),
        "test": _pickle(_batch(test_images, {b"fine_labels": np.asarray(test_fine),
                                             b"coarse_labels": np.asarray(test_coarse)}, "testing batch 1 of 1",
                               "test", 0)),
        "meta": _pickle({b"fine_label_names": [n.encode() for n in fine_names],
                         b"coarse_label_names": [n.encode() for n in coarse_names]}),
    }
    _write_tar_gz(path, SPECS["cifar-100"].folder, files)
    return path


def resolve_input(dataset: str, input_path: Optional[str], download_dir: Optional[str]) -> str:
    """The archive or folder to read: `input_path` as given, or the downloaded official archive."""
    if input_path:
        return input_path
    return download(dataset, download_dir or os.path.join(os.path.expanduser("~"), ".cache", "revnet"))
