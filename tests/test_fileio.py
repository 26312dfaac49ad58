"""Atomic writes: readers never see a partial file, and the file gets ordinary permissions."""
import os
import stat

import pytest

from revnet.common.fileio import atomic_write_bytes, atomic_write_json, read_json


def test_atomic_write_replaces_whole_files_with_umask_permissions(tmp_path):
    path = tmp_path / "sub" / "record.json"
    atomic_write_json(str(path), {"a": 1})
    atomic_write_json(str(path), {"a": 2})
    assert read_json(str(path)) == {"a": 2}
    assert [name for name in os.listdir(path.parent) if name.startswith(".tmp-")] == []
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "data.bin"
    atomic_write_bytes(str(path), b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(str(path), "text is not bytes")  # fails inside the write, after the temp file exists
    assert path.read_bytes() == b"old"
    assert [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")] == []
