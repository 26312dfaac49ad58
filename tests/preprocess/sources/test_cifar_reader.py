"""Reading and writing the official CIFAR python archives, and refusing hostile pickles."""
import io
import os
import pickle
import re
import tarfile
import urllib.error

import numpy as np
import pytest

from revnet.common.errors import UserError
from revnet.preprocess.sources import cifar

NAMES = [f"class{i}" for i in range(10)]


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (25, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 25),
            rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 7))


@pytest.fixture(scope="module")
def archive(tmp_path_factory, arrays):
    path = str(tmp_path_factory.mktemp("cifar") / "cifar-10-python.tar.gz")
    return cifar.write_cifar10_archive(path, *arrays, NAMES)


class _RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Evals:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return eval, (self.code,)


def test_archive_has_the_official_layout_and_contents(archive, arrays):
    train_images, train_labels, test_images, test_labels = arrays
    with tarfile.open(archive, "r:gz") as handle:
        members = {m.name: handle.extractfile(m).read() for m in handle.getmembers() if m.isfile()}
    expected = {f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)} | \
        {"cifar-10-batches-py/test_batch", "cifar-10-batches-py/batches.meta"}
    assert set(members) == expected
    batch = pickle.loads(members["cifar-10-batches-py/data_batch_1"], encoding="bytes")
    assert {b"data", b"labels", b"filenames", b"batch_label"} <= set(batch)
    assert batch[b"data"].shape == (5, 3072) and batch[b"data"].dtype == np.uint8
    # Channel-planar: the first 1024 bytes are the red plane, row-major.
    np.testing.assert_array_equal(batch[b"data"][0, :1024], train_images[0, :, :, 0].reshape(-1))
    np.testing.assert_array_equal(batch[b"data"][0, 1024:2048], train_images[0, :, :, 1].reshape(-1))
    assert batch[b"labels"] == [int(v) for v in train_labels[:5]]
    meta = pickle.loads(members["cifar-10-batches-py/batches.meta"], encoding="bytes")
    assert meta[b"label_names"] == [n.encode() for n in NAMES]
    test = pickle.loads(members["cifar-10-batches-py/test_batch"], encoding="bytes")
    np.testing.assert_array_equal(cifar.planar_to_hwc(test[b"data"]), test_images)


def test_restricted_reader_round_trips_batches(archive, arrays):
    spec = cifar.SPECS["cifar-10"]
    raw = cifar.read_members(archive, spec, ["batches.meta", "test_batch"])
    names = cifar.parse_meta(raw["batches.meta"], spec, "meta")
    assert names == {"labels": NAMES}
    batch = cifar.parse_batch(raw["test_batch"], spec, "test_batch", {"labels": 10})
    rows = list(cifar.iter_batch(batch))
    np.testing.assert_array_equal(np.stack([r[2] for r in rows]), arrays[2])
    assert [r[3]["labels"] for r in rows] == [int(v) for v in arrays[3]]


def test_numpy1_module_paths_are_accepted():
    data = pickle.dumps({b"data": np.arange(6, dtype=np.uint8)}, protocol=2)
    numpy1 = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert numpy1 != data or b"numpy.core.multiarray" in data
    np.testing.assert_array_equal(cifar.safe_loads(numpy1, "x")[b"data"], np.arange(6))


@pytest.mark.parametrize("payload_kind", ["system", "eval"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, payload_kind):
    marker = tmp_path / "pwned"
    if payload_kind == "system":
        payload = _RunsCommand(f"touch {marker}")
    else:
        payload = _Evals(f"open({str(marker)!r}, 'w').write('x')")
    data = pickle.dumps({b"data": payload, b"labels": [0]}, protocol=2)
    with pytest.raises(UserError, match="refusing to load"):
        cifar.safe_loads(data, "data_batch_1")
    assert not marker.exists()
    # The same payload inside an otherwise genuine archive is refused when reading it.
    path = tmp_path / "cifar-10-python.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as handle:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(data)
        handle.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    raw = cifar.read_members(str(path), cifar.SPECS["cifar-10"], ["data_batch_1"])
    with pytest.raises(UserError, match="refusing"):
        cifar.parse_batch(raw["data_batch_1"], cifar.SPECS["cifar-10"], "data_batch_1", {"labels": 10})
    assert not marker.exists()


def test_wrong_shape_missing_member_and_non_archive_are_user_errors(tmp_path, archive):
    spec = cifar.SPECS["cifar-10"]
    bad = pickle.dumps({b"data": np.zeros((4, 3000), np.uint8), b"labels": [0] * 4, b"filenames": [b"a"] * 4})
    with pytest.raises(UserError, match="expected uint8 N x 3072"):
        cifar.parse_batch(bad, spec, "data_batch_1", {"labels": 10})
    mismatched = pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3, b"filenames": [b"a"] * 4})
    with pytest.raises(UserError, match="does not have 4 entries"):
        cifar.parse_batch(mismatched, spec, "data_batch_1", {"labels": 10})
    with pytest.raises(UserError, match="lacks cifar-100-python/train"):
        cifar.read_members(archive, cifar.SPECS["cifar-100"], ["train"])
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar file")
    with pytest.raises(UserError, match="not a readable"):
        cifar.read_members(str(junk), spec, ["data_batch_1"])
    with pytest.raises(UserError, match="does not exist"):
        cifar.read_members(str(tmp_path / "missing.tar.gz"), spec, ["data_batch_1"])


def test_extracted_folder_reads_like_the_archive(tmp_path, archive):
    with tarfile.open(archive, "r:gz") as handle:
        handle.extractall(tmp_path, filter="data")
    spec = cifar.SPECS["cifar-10"]
    names = ["data_batch_3", "batches.meta"]
    assert cifar.read_members(str(tmp_path), spec, names) == cifar.read_members(archive, spec, names)
    assert cifar.read_members(str(tmp_path / spec.folder), spec, names) == cifar.read_members(archive, spec, names)


def test_download_fails_clearly_when_offline(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(cifar.urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match="cannot download .*pass --input"):
        cifar.resolve_input("cifar-10", None, str(tmp_path))


def test_download_refuses_a_wrong_md5(tmp_path, monkeypatch):
    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(cifar.urllib.request, "urlopen", lambda *a, **k: Response(b"tampered"))
    with pytest.raises(UserError, match="expected the published"):
        cifar.download("cifar-100", str(tmp_path))
    assert not (tmp_path / "cifar-100-python.tar.gz").exists()


def _batch_with_labels(labels, count=None):
    count = len(labels) if count is None else count
    return pickle.dumps({b"data": np.zeros((count, 3072), np.uint8), b"labels": labels,
                         b"filenames": [b"x.png"] * count}, protocol=2)


@pytest.mark.parametrize("labels, shown", [([0, 1.9, 2], "1.9 (float)"), ([0, "3", 2], "'3' (str)"),
                                           ([0, True, 2], "True (bool)"), (np.array([0.0, 1.0, 2.0]), "0.0 (float)")])
def test_labels_must_be_integers(labels, shown):
    """Issue 10 item 16: 1.9 used to become label 1 and "3" label 3, silently."""
    with pytest.raises(UserError, match=re.escape(f"b'labels' holds {shown}; labels must be integers in 0..9")):
        cifar.parse_batch(_batch_with_labels(labels), cifar.SPECS["cifar-10"], "data_batch_1", {"labels": 10})
    ints = cifar.parse_batch(_batch_with_labels([0, np.int64(9), 2]), cifar.SPECS["cifar-10"], "b", {"labels": 10})
    assert ints["labels"].tolist() == [0, 9, 2]
    with pytest.raises(UserError, match=r"outside 0..9"):
        cifar.parse_batch(_batch_with_labels([0, 10**30, 2]), cifar.SPECS["cifar-10"], "b", {"labels": 10})


def test_a_batch_without_images_is_named_clearly(tmp_path):
    """Issue 10 item 16: an empty batch pickles b'' as __builtin__.bytes, which was refused as hostile."""
    data = _batch_with_labels([])
    assert b"__builtin__" in data
    with pytest.raises(UserError, match=r"data_batch_3 holds 0 images; every batch of the official archive"):
        cifar.parse_batch(data, cifar.SPECS["cifar-10"], "cifar-10-batches-py/data_batch_3", {"labels": 10})
    # A whole archive written with 0 training images in a batch fails the same way through read + parse.
    path = cifar.write_cifar10_archive(str(tmp_path / "c.tar.gz"), np.zeros((3, 32, 32, 3), np.uint8), [1, 2, 3],
                                       np.zeros((1, 32, 32, 3), np.uint8), [0], NAMES, num_train_batches=5)
    raw = cifar.read_members(path, cifar.SPECS["cifar-10"], ["data_batch_1"])
    with pytest.raises(UserError, match="data_batch_1 holds 0 images"):
        cifar.parse_batch(raw["data_batch_1"], cifar.SPECS["cifar-10"], "data_batch_1", {"labels": 10})
