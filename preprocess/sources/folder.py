"""Folders of one's own images as a dataset: listing, classes, splits and what is skipped or rejected.

    DIR/<class>/**/<image>                     the validation split drawn by a hash of each file's path
    DIR/train/<class>/**/<image>               with DIR/val/ (or validation/) and optionally DIR/test/;
                                               without val/, validation is drawn from train/ by the hash
    --manifest FILE.csv                        path,label[,split] rows (header optional; relative paths
                                               from --input, else from the CSV's folder)

A class is a folder name (any Unicode, spaces included; control characters are refused because class
names become lines of the exported labels.txt), labels are numbered in sorted class-name order. The
split of a file without a split folder is `hash_split(relative path)`: a function of that file's path
alone, so adding files never moves old ones across splits.

Skipped (counted, never opened): hidden files, and files whose extension is not an image format read
here (IMAGE_EXTENSIONS). Hidden folders and __MACOSX/ are not walked. Rejected at listing (counted, with
a reason): symlink loops (whatever their name), and among image names: broken symlinks, FIFOs, sockets
and devices, paths that are not valid UTF-8, images outside a class folder. The shard workers reject
what does not decode.
"""
from __future__ import annotations

import csv
import errno
import hashlib
import io
import logging
import os
import stat
import unicodedata
from dataclasses import dataclass
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

from revnet.common import storage
from revnet.common.errors import UserError

log = logging.getLogger(__name__)

# The extensions Pillow registers for preprocess.images.FOLDER_FORMATS (kept here so that listing does not
# import Pillow; tests/preprocess/sources/test_folder_listing.py checks the two agree).
IMAGE_EXTENSIONS = (".apng", ".bmp", ".gif", ".jfif", ".jpe", ".jpeg", ".jpg", ".mpo", ".pbm", ".pfm", ".pgm",
                    ".png", ".pnm", ".ppm", ".tif", ".tiff", ".webp")
SHOWN_EXTENSIONS = ".jpg, .png, .gif, .bmp, .webp, .tif, ..."  # for messages
SPLIT_FOLDERS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
SPLIT_ORDER = ("train", "validation", "test")
NOT_WALKED = ("__MACOSX",)  # a zip's resource forks (plus every hidden folder)
SPLIT_SALT = "revnet folder split v1"
LOOP = "symlink loop"


@dataclass(frozen=True)
class FolderItem:
    split: str
    source_id: str  # the path relative to --input (or as the manifest writes it), "/"-separated
    path: str       # what the worker reads
    class_name: str


class FolderListing(NamedTuple):
    class_names: List[str]              # sorted; label k names class_names[k]
    items: Dict[str, List[FolderItem]]  # per split, in source_id order
    rejects: List[Dict]                 # {"path", "split", "reason"}
    skips: List[Dict]                   # the same keys
    splits: Tuple[str, ...]             # ("train", "validation") or with "test"
    layout: str                         # "classes", "splits" or "manifest"


def hash_split(source_id: str, val_fraction: float) -> str:
    """"validation" for a fraction `val_fraction` of all paths, chosen by a hash of this path alone."""
    digest = hashlib.sha256(f"{SPLIT_SALT}\x00{source_id}".encode("utf-8")).digest()
    return "validation" if int.from_bytes(digest[:8], "big") < val_fraction * 2 ** 64 else "train"


def _visible_folders(folder: str) -> List[str]:
    return [name for name in storage.children(folder)[1] if not name.startswith(".") and name not in NOT_WALKED]


def detect_layout(input_dir: str) -> str:
    """"splits" if DIR holds train/ (and only split folders), else "classes"; a mix is a UserError."""
    folders = _visible_folders(input_dir)
    split_folders = [name for name in folders if name in SPLIT_FOLDERS]
    if not split_folders:
        return "classes"
    others = [name for name in folders if name not in SPLIT_FOLDERS]
    if "train" not in split_folders or others:
        raise UserError(f"{input_dir!r} mixes split folders ({', '.join(split_folders)}) with "
                        f"{'class folders (' + ', '.join(others[:3]) + ')' if others else 'no train/'}; expected "
                        f"either DIR/<class>/... or DIR/train/<class>/... with val/ (and test/) beside it")
    if "val" in split_folders and "validation" in split_folders:
        raise UserError(f"{input_dir!r} holds both val/ and validation/; keep one of them")
    return "splits"


def check_input(input_dir: Optional[str], manifest: Optional[str], val_fraction_given: bool) -> str:
    """The layout, after cheap checks of the folder and manifest given (before the job starts)."""
    if manifest:
        if not storage.is_file(manifest):
            raise UserError(f"--manifest {manifest!r} does not exist; expected a CSV file of path,label[,split] rows")
        if input_dir and not storage.is_dir(input_dir):
            raise UserError(f"--input {input_dir!r} (the folder the manifest's relative paths start from) does "
                            f"not exist")
        return "manifest"
    if not input_dir:
        raise UserError("folder needs --input DIR (DIR/<class>/<image>...) or --manifest FILE.csv")
    if not storage.is_dir(input_dir):
        raise UserError(f"--input {input_dir!r} does not exist or is not a folder; expected DIR/<class>/<image>...")
    layout = detect_layout(input_dir)
    has_val = any(name in ("val", "validation") for name in _visible_folders(input_dir))
    if layout == "splits" and has_val and val_fraction_given:
        raise UserError(f"--val-fraction applies only without a validation folder, and {input_dir!r} has one")
    return layout


# ------------------------------------------------------------------------------------------------
# Walking a tree
# ------------------------------------------------------------------------------------------------
class _Entry(NamedTuple):
    relative: str          # "/"-separated, from the walk's root
    path: str
    problem: Optional[str]  # why it cannot be read (a reject), if it cannot


def _walk_local(root: str) -> Iterator[_Entry]:
    """Every file below `root` (symlinks followed), depth first in sorted order, with what is wrong with it."""
    def visit(folder: str, relative: str, ancestors: Tuple[Tuple[int, int], ...]) -> Iterator[_Entry]:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda e: e.name)
        for entry in entries:
            name, path = entry.name, entry.path
            child = f"{relative}/{name}" if relative else name
            try:
                status = os.stat(path)  # follows symlinks
            except OSError as error:
                if entry.is_symlink():
                    why = (f"{LOOP} (Too many levels of symbolic links)" if error.errno == errno.ELOOP
                           else "broken symlink (its target does not exist)")
                else:
                    why = f"cannot read: {error.strerror}"
                yield _Entry(child, path, why)
                continue
            if stat.S_ISDIR(status.st_mode):
                if name.startswith(".") or name in NOT_WALKED:
                    continue
                key = (status.st_dev, status.st_ino)
                if key in ancestors:
                    yield _Entry(child, path, f"{LOOP} (a link to a folder that holds it)")
                    continue
                yield from visit(path, child, ancestors + (key,))
            else:
                yield _Entry(child, path, storage.not_regular(status.st_mode))

    status = os.stat(root)
    yield from visit(root, "", ((status.st_dev, status.st_ino),))


def _walk_remote(root: str, relative: str = "") -> Iterator[_Entry]:
    """The same on an object store (a "folder" is a name prefix; there are no links or special files)."""
    files, folders = storage.children(storage.join(root, relative) if relative else root)
    for name in sorted(files + folders):
        child = f"{relative}/{name}" if relative else name
        if name in folders:
            if not name.startswith(".") and name not in NOT_WALKED:
                yield from _walk_remote(root, child)
        else:
            yield _Entry(child, storage.join(root, *child.split("/")), None)


def _walk(root: str) -> Iterator[_Entry]:
    return _walk_remote(root) if storage.is_remote(root) else _walk_local(os.path.abspath(root))


def _skip_reason(relative: str) -> Optional[str]:
    name = relative.rsplit("/", 1)[-1]
    if name.startswith("."):
        return "hidden file"
    extension = os.path.splitext(name)[1].lower()
    if extension not in IMAGE_EXTENSIONS:
        return f"not an image file (extension {extension or 'none'!r})"
    return None


# ------------------------------------------------------------------------------------------------
# Listing
# ------------------------------------------------------------------------------------------------
class _Collector:
    """Items, rejects and skips as they are found, with the per-class image counts the checks need."""

    def __init__(self, val_fraction: float):
        self.val_fraction = val_fraction
        self.items: List[FolderItem] = []
        self.rejects: List[Dict] = []
        self.skips: List[Dict] = []
        self.found: Dict[Tuple[str, str], int] = {}  # (split or "", class folder) -> files with an image extension

    def split_of(self, source_id: str, split: Optional[str]) -> str:
        return split or hash_split(source_id, self.val_fraction)

    def reject(self, path: str, source_id: str, split: Optional[str], reason: str) -> None:
        self.rejects.append({"path": storage.printable(path), "reason": reason,
                             "split": self.split_of(storage.printable(source_id), split)})

    def add(self, entry: _Entry, source_id: str, split: Optional[str], class_name: Optional[str],
            class_key: Tuple[str, str]) -> None:
        """One file found in a tree: skipped, rejected or an item of `class_name` (None: outside any class)."""
        skip = _skip_reason(entry.relative)
        if skip and not (entry.problem or "").startswith(LOOP):  # what a loop points to cannot be told
            self.skips.append({"path": storage.printable(entry.path), "reason": skip,
                               "split": self.split_of(storage.printable(source_id), split)})
            return
        if class_name is not None:
            self.found[class_key] = self.found.get(class_key, 0) + 1
        if not storage.is_utf8(entry.path):
            self.reject(entry.path, source_id, split, "path is not valid UTF-8")
        elif entry.problem:
            self.reject(entry.path, source_id, split, entry.problem)
        elif class_name is None:
            self.reject(entry.path, source_id, split, "image outside a class folder")
        else:
            self.items.append(FolderItem(self.split_of(source_id, split), source_id, entry.path, class_name))


def _class_name(folder_name: str, where: str) -> str:
    """The class a folder names: NFC-normalised (macOS writes decomposed names); control characters refused."""
    name = unicodedata.normalize("NFC", folder_name)
    bad = [char for char in name if unicodedata.category(char).startswith("C")]
    if bad or not name.strip():
        what = f"a control character ({bad[0]!r})" if bad else "a blank name"
        raise UserError(f"class folder {where!r} has {what} in its name; class names become lines of the "
                        "exported labels.txt: rename it")
    return name


def _list_tree(input_dir: str, layout: str, collector: _Collector) -> None:
    """Walk the tree into `collector`; an empty training class folder is a UserError."""
    # Without a validation folder, validation is drawn from train/ by the hash, like a tree without splits.
    hashed = layout == "classes" or not any(name in ("val", "validation") for name in _visible_folders(input_dir))
    folders: Dict[Tuple[Optional[str], str], str] = {}
    for entry in _walk(input_dir):
        parts = entry.relative.split("/")
        if layout == "splits":
            split = SPLIT_FOLDERS[parts[0]] if len(parts) > 1 else None  # None: a file beside the split folders
            class_parts = parts[1:] if split else []
            split = None if split == "train" and hashed else split
        else:
            split, class_parts = None, parts
        class_name = None
        if len(class_parts) > 1 and storage.is_utf8(class_parts[0]):
            folder = "/".join(parts[:len(parts) - len(class_parts) + 1])
            class_name = _class_name(class_parts[0], storage.join(input_dir, *folder.split("/")))
            if folders.setdefault((split, class_name), folder) != folder:
                raise UserError(f"folders {folders[split, class_name]!r} and {folder!r} of {input_dir!r} name the same "
                                f"class {class_name!r} (their names differ only in Unicode normalisation); merge them")
        collector.add(entry, entry.relative, split, class_name, ("" if split is None else split, class_name or ""))
    train_root = storage.join(input_dir, "train") if layout == "splits" else input_dir
    for name in _visible_folders(train_root):
        if not storage.is_utf8(name):
            continue  # its files are rejects already
        class_key = ("" if hashed else "train", _class_name(name, storage.join(train_root, name)))
        if not collector.found.get(class_key):
            raise UserError(f"class folder {storage.join(train_root, name)!r} holds no images ({SHOWN_EXTENSIONS}); "
                            f"remove it or fill it: it would add a class with no examples")


def _manifest_rows(manifest: str) -> Iterator[Tuple[int, List[str]]]:
    data = storage.read_bytes(manifest)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(f"--manifest {manifest!r} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        row = [cell.strip() for cell in row]
        if not any(row):
            continue
        if number == 1 and [cell.lower() for cell in row] in (["path", "label"], ["path", "label", "split"]):
            continue
        if len(row) not in (2, 3) or not row[0] or not row[1]:
            raise UserError(f"{manifest}:{number}: expected path,label[,split], got {row!r}")
        yield number, row


def _list_manifest(manifest: str, input_dir: Optional[str], collector: _Collector) -> None:
    base = input_dir or os.path.dirname(os.path.abspath(manifest))
    seen: Dict[str, Tuple[str, Optional[str], int]] = {}
    for number, row in _manifest_rows(manifest):
        path, class_name = row[0], _class_name(row[1], f"{manifest}:{number}")
        split = None
        if len(row) == 3 and row[2]:
            if row[2].lower() not in SPLIT_FOLDERS:
                raise UserError(f"{manifest}:{number}: split {row[2]!r} is not one of {', '.join(SPLIT_FOLDERS)}")
            split = SPLIT_FOLDERS[row[2].lower()]
        if path in seen:
            if seen[path][:2] != (class_name, split):
                raise UserError(f"{manifest}:{number} lists {path!r} again with another label or split than on "
                                f"line {seen[path][2]}; expected one row per image")
            log.warning("%s:%d repeats %s; using it once", manifest, number, path)
            continue
        seen[path] = (class_name, split, number)
        full = path if storage.is_remote(path) or os.path.isabs(path) else storage.join(base, path)
        problem = None
        if not storage.is_remote(full):
            try:
                problem = storage.not_regular(os.stat(full).st_mode)
            except OSError as error:
                problem = f"cannot read: {error.strerror}"
        collector.found[(split or "", class_name)] = collector.found.get((split or "", class_name), 0) + 1
        if problem:
            collector.reject(full, path, split, problem)
        else:
            collector.items.append(FolderItem(collector.split_of(path, split), path, full, class_name))


def list_folder(input_dir: Optional[str], manifest: Optional[str] = None, val_fraction: float = 0.1,
                val_fraction_given: bool = False) -> FolderListing:
    """Every image with its class and split, the files rejected or skipped while listing, the class names."""
    layout = check_input(input_dir, manifest, val_fraction_given)
    collector = _Collector(val_fraction)
    where = manifest if layout == "manifest" else input_dir
    if layout == "manifest":
        _list_manifest(manifest, input_dir, collector)
    else:
        _list_tree(input_dir, layout, collector)
    train_classes = sorted({item.class_name for item in collector.items if item.split == "train"} |
                           {name for (split, name) in collector.found if split in ("", "train") and name})
    if not train_classes:
        raise UserError(f"{where!r} holds no images in class folders; expected DIR/<class>/<image> (images: "
                        f"{SHOWN_EXTENSIONS})")
    if len(train_classes) == 1:
        raise UserError(f"{where!r} holds one class, {train_classes[0]!r}; a classifier needs at least two (one "
                        f"folder, or label, per class)")
    unknown = sorted({item.class_name for item in collector.items} - set(train_classes))
    if unknown:
        raise UserError(f"class {unknown[0]!r} has validation or test images in {where!r} but no training images; "
                        f"expected the same classes in every split")
    splits = ("train", "validation") + (("test",) if any(i.split == "test" for i in collector.items) else ())
    items = {split: sorted((i for i in collector.items if i.split == split), key=lambda i: i.source_id)
             for split in splits}
    without_training = sorted(set(train_classes) - {item.class_name for item in items["train"]})
    if without_training:
        log.warning("class(es) %s of %s have no training images left (every one is in another split or listed as a "
                    "reject)", ", ".join(repr(name) for name in without_training), where)
    return FolderListing(train_classes, items, collector.rejects, collector.skips, splits, layout)
