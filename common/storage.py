"""Paths that are either local or on a Beam file system (gs://, s3://, hdfs://...), and atomic folder
replacement.

`is_remote` is the one test for "local or Beam file system"; everything else here dispatches on it.
apache_beam is imported only when a remote path is actually used, so local callers (the exporter, the
trainer's tools) never pay for it. On object stores a "folder" is a name prefix and `*` does not cross
"/"; there is no directory rename, so `publish_folder` moves files one by one and writes the
completeness marker last.
"""
from __future__ import annotations

import os
import shutil
import stat
import uuid
from typing import List, Optional, Tuple


def is_remote(path: str) -> bool:
    return "://" in path


def _fs():
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def join(folder: str, *names: str) -> str:
    return _fs().join(folder, *names) if is_remote(folder) else os.path.join(folder, *names)


def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] if is_remote(path) else os.path.basename(path)


def exists(path: str) -> bool:
    return _fs().exists(path) if is_remote(path) else os.path.exists(path)


def is_file(path: str) -> bool:
    return _fs().exists(path) if is_remote(path) else os.path.isfile(path)


def is_utf8(name: str) -> bool:
    """False for names the OS could not decode (os.listdir turns their bytes into lone surrogates)."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def printable(path: str) -> str:
    """A path that may hold undecodable bytes, with them shown as \\xNN escapes."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def file_size(path: str) -> Optional[int]:
    """The size of a file in bytes, or None if it cannot be found out."""
    try:
        if is_remote(path):
            return _fs().match([path])[0].metadata_list[0].size_in_bytes
        return os.path.getsize(path)
    except (OSError, IndexError, ValueError):
        return None


def children(folder: str) -> Tuple[List[str], List[str]]:
    """(file names, subfolder names) directly inside `folder`, sorted; empty if it does not exist."""
    if not is_remote(folder):
        if not os.path.isdir(folder):
            return [], []
        files, folders = [], []
        for entry in os.scandir(folder):
            (folders if _is_dir_entry(entry) else files).append(entry.name)
        return sorted(files), sorted(folders)
    prefix = folder.rstrip("/") + "/"
    files, folders = set(), set()
    for pattern, target in ((prefix + "*", files), (prefix + "*/*", folders)):
        for match in _fs().match([pattern])[0].metadata_list:
            target.add(match.path[len(prefix):].split("/", 1)[0])
    return sorted(files), sorted(folders)


def _is_dir_entry(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # e.g. a symlink loop: listed as a file, and reading it says what is wrong
        return False


def is_dir(folder: str) -> bool:
    if not is_remote(folder):
        return os.path.isdir(folder)
    files, folders = children(folder)
    return bool(files or folders)


def list_names(folder: str) -> List[str]:
    """Every entry directly in `folder`: files and subfolders (empty if it does not exist)."""
    files, folders = children(folder)
    return sorted(files + folders)


def open_read(path: str):
    """A binary file object for reading."""
    if is_remote(path):
        return _fs().open(path, compression_type="uncompressed")
    return open(path, "rb")


def read_bytes(path: str) -> bytes:
    with open_read(path) as handle:
        return handle.read()


_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class NotAnInputFile(OSError):
    """The path is not a regular file of a readable size; the message says what it is."""


def not_regular(mode: int) -> Optional[str]:
    """Why a file of this st_mode is not a regular file ("not a regular file (a FIFO)"), or None if it is one."""
    if stat.S_ISREG(mode):
        return None
    return next((f"not a regular file ({kind})" for test, kind in _FILE_KINDS if test(mode)), "not a regular file")


def _check_regular(mode: int, size: int, max_bytes: int) -> None:
    if not_regular(mode):
        raise NotAnInputFile(not_regular(mode))
    if size > max_bytes:
        raise NotAnInputFile(f"file of {size:,} bytes is over the limit of {max_bytes:,} bytes")


def read_input_file(path: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes`. A FIFO, socket or device is never read (a FIFO
    blocks its reader forever): NotAnInputFile says what it is; a symlink loop is an OSError (ELOOP)."""
    if is_remote(path):  # object stores hold only regular files
        with open_read(path) as handle:
            data = handle.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise NotAnInputFile(f"file is over the limit of {max_bytes:,} bytes")
        return data
    status = os.stat(path)
    _check_regular(status.st_mode, status.st_size, max_bytes)
    # Non-blocking, and checked again on the open file: it may have been replaced since the stat.
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(descriptor, "rb") as handle:
        status = os.fstat(handle.fileno())
        _check_regular(status.st_mode, status.st_size, max_bytes)
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise NotAnInputFile(f"file grew over the limit of {max_bytes:,} bytes while being read")
    return data


def read_text(path: str, encoding: str = "utf-8") -> str:
    return read_bytes(path).decode(encoding)


class _LocalAtomicFile:
    """A local file that appears under its name only when closed without an error."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)  # as Beam's file systems do
        self.temp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
        self.handle = open(self.temp, "wb")

    def write(self, data: bytes) -> int:
        return self.handle.write(data)

    def __enter__(self):
        return self

    def __exit__(self, error_type, error, traceback):
        self.handle.close()
        if error_type is None:
            os.replace(self.temp, self.path)
        else:
            os.remove(self.temp)


def create(path: str):
    """A binary file object for writing; the file appears complete or not at all (object stores commit
    on close; locally a temporary name is renamed), so a killed writer never leaves half a file."""
    if is_remote(path):
        return _fs().create(path, compression_type="uncompressed")
    return _LocalAtomicFile(path)


def write_bytes(path: str, data: bytes) -> None:
    with create(path) as handle:
        handle.write(data)


def makedirs(folder: str) -> None:
    """Create a local folder (object stores need none)."""
    if not is_remote(folder):
        os.makedirs(folder, exist_ok=True)


def remove(path: str) -> None:
    if is_remote(path):
        _fs().delete([path])
    elif os.path.exists(path):
        os.remove(path)


def remove_tree(folder: str) -> None:
    if not is_remote(folder):
        shutil.rmtree(folder, ignore_errors=True)
        return
    files, folders = children(folder)
    for sub in folders:
        remove_tree(join(folder, sub))
    if files:
        _fs().delete([join(folder, name) for name in files])


def temp_sibling(folder: str, tag: str) -> str:
    """A fresh hidden folder next to `folder` (same file system, so a rename can publish it)."""
    folder = folder.rstrip("/")
    parent, name = folder.rsplit("/", 1) if is_remote(folder) else os.path.split(folder)
    path = join(parent, f".{name}.{tag}-{uuid.uuid4().hex[:8]}")
    makedirs(path)
    return path


def publish_folder(staging: str, target: str, last_file: Optional[str] = None) -> None:
    """Replace `target` by the finished `staging` folder, atomically where the file system allows.

    Locally: one rename (an existing `target` is moved aside first and deleted only afterwards).
    On object stores: the old files are removed (its `last_file` marker first, so a mix of old and new
    never looks complete), the new ones renamed over, and `last_file` renamed last.
    """
    if not is_remote(target):
        old = None
        if os.path.exists(target):
            old = temp_sibling(target, "old")
            os.rmdir(old)
            os.replace(target, old)
        os.replace(staging, target)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return
    existing = list_names(target)
    if last_file in existing:
        remove(join(target, last_file))
    remove_tree(target)
    try:
        _fs().mkdirs(target)  # file systems with real folders (hdfs) need it; object stores ignore it
    except IOError:
        pass  # already there
    names = [name for name in list_names(staging) if name != last_file]
    if names:
        _fs().rename([join(staging, n) for n in names], [join(target, n) for n in names])
    if last_file:
        _fs().rename([join(staging, last_file)], [join(target, last_file)])
