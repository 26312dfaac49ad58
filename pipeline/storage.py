"""Output-folder operations for local paths and Beam file systems (gs://, s3://, hdfs://...).

A dataset appears only when finished: it is built in a temporary sibling folder and published by one
directory rename on local disks. Object stores have no directory rename, so there the shards are
renamed one by one and metadata.json, the completeness marker, is written last.
"""
from __future__ import annotations

import os
import shutil
import uuid
from typing import List


def is_remote(path: str) -> bool:
    return "://" in path


def _fs():
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def join(folder: str, name: str) -> str:
    return _fs().join(folder, name) if is_remote(folder) else os.path.join(folder, name)


def exists(path: str) -> bool:
    return _fs().exists(path) if is_remote(path) else os.path.exists(path)


def list_names(folder: str) -> List[str]:
    """File names directly in `folder` (empty if it does not exist)."""
    if not is_remote(folder):
        return sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    prefix = folder.rstrip("/") + "/"
    matches = _fs().match([prefix + "*"])[0].metadata_list
    return sorted(m.path[len(prefix):] for m in matches if "/" not in m.path[len(prefix):])


def read_text(path: str) -> str:
    if is_remote(path):
        with _fs().open(path, compression_type="uncompressed") as handle:
            return handle.read().decode("utf-8")
    with open(path, "r", encoding="utf-8") as handle:
        return handle.read()


def write_bytes(path: str, data: bytes) -> None:
    if is_remote(path):
        with _fs().create(path, compression_type="uncompressed") as handle:
            handle.write(data)
        return
    with open(path, "wb") as handle:
        handle.write(data)


def remove(path: str) -> None:
    if is_remote(path):
        _fs().delete([path])
    elif os.path.exists(path):
        os.remove(path)


def temp_sibling(folder: str, tag: str) -> str:
    """A fresh hidden folder next to `folder` (same file system, so a rename can publish it)."""
    folder = folder.rstrip("/")
    parent, name = folder.rsplit("/", 1) if is_remote(folder) else os.path.split(folder)
    path = join(parent, f".{name}.{tag}-{uuid.uuid4().hex[:8]}")
    if not is_remote(path):
        os.makedirs(path)
    return path


def remove_tree(folder: str) -> None:
    if is_remote(folder):
        names = list_names(folder)
        if names:
            _fs().delete([join(folder, name) for name in names])
    else:
        shutil.rmtree(folder, ignore_errors=True)


def publish(work_dir: str, output_dir: str, last_file: str) -> None:
    """Move the finished folder into place; `last_file` (metadata.json) becomes visible last."""
    if not is_remote(output_dir):
        old = None
        if os.path.exists(output_dir):
            old = temp_sibling(output_dir, "old")
            os.rmdir(old)
            os.rename(output_dir, old)
        os.rename(work_dir, output_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return
    existing = list_names(output_dir)
    if last_file in existing:  # un-mark the old dataset first, so no mix of old and new ever looks complete
        remove(join(output_dir, last_file))
    if existing:
        _fs().delete([join(output_dir, name) for name in existing if name != last_file])
    try:
        _fs().mkdirs(output_dir)  # a no-op on object stores
    except IOError:
        pass  # already there
    names = [name for name in list_names(work_dir) if name != last_file]
    _fs().rename([join(work_dir, n) for n in names], [join(output_dir, n) for n in names])
    _fs().rename([join(work_dir, last_file)], [join(output_dir, last_file)])
