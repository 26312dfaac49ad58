"""Find and read a TF1 name-based checkpoint (the original code's): a checkpoint prefix, a folder holding a
`checkpoint` state file, or a release archive (.tar.gz), whose checkpoint files alone are copied into a
fresh temporary folder (removed afterwards) and never over anything.
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import shutil
import tarfile
import tempfile
from typing import Dict, Iterator, List, Mapping, Tuple

from revnet.common.errors import UserError

log = logging.getLogger(__name__)

_DATA_SUFFIX = re.compile(r"\.data-\d{5}-of-\d{5}$")
_STATE_PATH = re.compile(r'^\s*model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', re.MULTILINE)
STATE_FILE = "checkpoint"


def _state_prefix(text: str) -> str:
    """The latest checkpoint named by a `checkpoint` state file (text proto), or ""."""
    match = _STATE_PATH.search(text)
    return match.group(1) if match else ""


def _prefix_in_folder(folder: str) -> str:
    state = os.path.join(folder, STATE_FILE)
    if os.path.isfile(state):
        with open(state, "r", encoding="utf-8", errors="replace") as handle:
            recorded = _state_prefix(handle.read())
        # The state file may hold an absolute path from the machine that trained; try it, then its basename here.
        for candidate in (os.path.join(folder, recorded), os.path.join(folder, os.path.basename(recorded))):
            if recorded and os.path.exists(candidate + ".index"):
                return candidate
    indexes = sorted(glob.glob(os.path.join(folder, "*.index")))
    if len(indexes) == 1:
        return indexes[0][: -len(".index")]
    if not indexes:
        raise UserError(f"{folder!r} holds no checkpoint (no *.index file and no usable {STATE_FILE!r} state file)")
    some = ", ".join(os.path.basename(i) for i in indexes[:4])
    raise UserError(f"{folder!r} holds {len(indexes)} checkpoints ({some}"
                    f"{', ...' if len(indexes) > 4 else ''}) and no usable state file; pass one prefix, e.g. "
                    f"{indexes[-1][: -len('.index')]}")


def resolve_prefix(path: str) -> str:
    """A checkpoint prefix from a prefix, a folder, or one of the checkpoint's own files."""
    if os.path.isdir(path):
        return _prefix_in_folder(path)
    stripped = _DATA_SUFFIX.sub("", path[: -len(".index")] if path.endswith(".index") else path)
    if os.path.exists(stripped + ".index"):
        return stripped
    if os.path.isfile(stripped):  # a single-file (V1) checkpoint
        return stripped
    raise UserError(f"no checkpoint at {path!r}; expected a checkpoint prefix (PREFIX.index must exist), "
                    f"a folder with a '{STATE_FILE}' file, or a .tar.gz release archive")


def _members(archive: tarfile.TarFile) -> Dict[str, tarfile.TarInfo]:
    """Regular-file members by normalised name ("./a/b" -> "a/b")."""
    return {os.path.normpath(member.name): member for member in archive.getmembers() if member.isfile()}


def _archive_prefix(archive: tarfile.TarFile, members: Mapping[str, tarfile.TarInfo], path: str) -> str:
    """The member prefix of the archive's checkpoint: the one its state file names, else the only one."""
    indexes = sorted(name[: -len(".index")] for name in members if name.endswith(".index"))
    for name, member in members.items():
        if os.path.basename(name) == STATE_FILE:
            recorded = os.path.basename(_state_prefix(archive.extractfile(member).read().decode("utf-8", "replace")))
            candidate = os.path.join(os.path.dirname(name), recorded)
            if recorded and candidate in indexes:
                return candidate
    if len(indexes) == 1:
        return indexes[0]
    if not indexes:
        raise UserError(f"archive {path!r} holds no checkpoint (no *.index member)")
    raise UserError(f"archive {path!r} holds {len(indexes)} checkpoints and no usable state file: "
                    f"{', '.join(indexes[:4])}; unpack it and pass one prefix")


def _unpack_checkpoint(path: str, folder: str) -> str:
    """Copy the archive's checkpoint files (index, data shards; not the graph) into `folder`; the prefix."""
    try:
        with tarfile.open(path, "r:*") as archive:
            members = _members(archive)
            prefix = _archive_prefix(archive, members, path)
            wanted = [name for name in members if name == prefix + ".index" or _DATA_SUFFIX.sub("", name) == prefix]
            total_mb = sum(members[name].size for name in wanted) / 2 ** 20
            log.info("unpacking %s from %s (%.0f MB) into %s", os.path.basename(prefix), path, total_mb, folder)
            for name in wanted:
                # Members are copied by their base name into our own folder, so no archive path can escape it.
                with archive.extractfile(members[name]) as source, \
                        open(os.path.join(folder, os.path.basename(name)), "wb") as target:
                    shutil.copyfileobj(source, target, 16 * 2 ** 20)
    except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read archive {path!r} ({type(error).__name__}: {error}); is it complete?") from None
    return os.path.join(folder, os.path.basename(prefix))


def _is_archive(path: str) -> bool:
    return os.path.isfile(path) and not path.endswith(".index") and tarfile.is_tarfile(path)


@contextlib.contextmanager
def located_checkpoint(path: str) -> Iterator[str]:
    """Yield the checkpoint prefix for PATH; an archive is unpacked into a temporary folder for the duration."""
    if not os.path.exists(path) and not os.path.exists(path + ".index"):
        raise UserError(f"{path!r} does not exist; expected a checkpoint prefix, a folder or a .tar.gz archive")
    if not _is_archive(path):
        yield resolve_prefix(path)
        return
    with tempfile.TemporaryDirectory(prefix="revnet-import-") as folder:
        yield _unpack_checkpoint(path, folder)


def read_structure(prefix: str):
    """(reader, {name: shape}, {name: tf.DType}) of a checkpoint, or a UserError if it cannot be read."""
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as error:
        raise UserError(f"cannot read checkpoint {prefix!r}: {_first_line(error)}") from None
    shapes = {name: tuple(shape) for name, shape in reader.get_variable_to_shape_map().items()}
    return reader, shapes, reader.get_variable_to_dtype_map()


def read_tensors(reader, prefix: str, names: List[str]) -> Dict[str, "object"]:
    """Every named tensor as numpy; a truncated or corrupt data file is a UserError."""
    import tensorflow as tf

    values = {}
    for name in names:
        try:
            values[name] = reader.get_tensor(name)
        except (tf.errors.OpError, ValueError, IndexError, RuntimeError) as error:  # short reads raise IndexError
            raise UserError(f"checkpoint {prefix!r} cannot be read at {name} (truncated or corrupt data file?): "
                            f"{_first_line(error)}") from None
    return values


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def scalar_value(reader, name: str, shapes: Mapping[str, Tuple]) -> object:
    """A scalar entry's value (e.g. global_step) for the report, or None if absent or unreadable."""
    if name not in shapes or shapes[name] != ():
        return None
    try:
        return reader.get_tensor(name).item()
    except Exception:  # noqa: BLE001 - provenance only; the weights themselves are checked strictly
        return None
