"""ILSVRC2012 as extracted on disk: listing the images and mapping them to labels.

    INPUT/train/<synset>/*.JPEG
    INPUT/val/<synset>/*.JPEG                     or  INPUT/val/ILSVRC2012_val_XXXXXXXX.JPEG + --val-labels FILE
    INPUT/LOC_synset_mapping.txt (optional)       "n01440764 tench, Tinca tinca" per line: the class texts

FILE is the Kaggle LOC_val_solution.csv (ImageId,PredictionString; the first token is the synset)
or a text file with one synset per line, in sorted file-name order. Labels are 0..N-1 in sorted synset
order, plus `label_offset` (1 gives the 1..1000 convention of the classic TF ImageNet scripts).
"""
from __future__ import annotations

import csv
import io
import os
import posixpath
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from revnet.common.errors import UserError

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
CLASS_TEXT_FILES = ("LOC_synset_mapping.txt", "synset_words.txt")


@dataclass(frozen=True)
class ImageItem:
    split: str
    source_id: str  # path relative to the input folder: unique, and the shuffling key's input
    path: str
    label: int
    synset: str
    text: str


# Local folders use os; gs:// and other Beam file systems are listed with FileSystems.match, where a
# "folder" is a name prefix and `*` does not cross "/".
def _remote(path: str) -> bool:
    return "://" in path


def _join(folder: str, name: str) -> str:
    return posixpath.join(folder, name) if _remote(folder) else os.path.join(folder, name)


def _remote_children(folder: str):
    """(file names, subfolder names) directly inside a remote folder."""
    from apache_beam.io.filesystems import FileSystems

    prefix = folder.rstrip("/") + "/"
    files, folders = set(), set()
    for pattern, target in ((prefix + "*", files), (prefix + "*/*", folders)):
        for match in FileSystems.match([pattern])[0].metadata_list:
            target.add(match.path[len(prefix):].split("/", 1)[0])
    return sorted(files), sorted(folders)


def _is_dir(folder: str) -> bool:
    if not _remote(folder):
        return os.path.isdir(folder)
    files, folders = _remote_children(folder)
    return bool(files or folders)


def _image_files(folder: str) -> List[str]:
    names = _remote_children(folder)[0] if _remote(folder) else [
        name for name in os.listdir(folder) if os.path.isfile(os.path.join(folder, name))]
    return sorted(name for name in names if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS))


def _subfolders(folder: str) -> List[str]:
    names = _remote_children(folder)[1] if _remote(folder) else [
        name for name in os.listdir(folder) if os.path.isdir(os.path.join(folder, name))]
    return sorted(name for name in names if not name.startswith("."))


def _is_file(path: str) -> bool:
    if not _remote(path):
        return os.path.isfile(path)
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(path)


def _open_text(path: str):
    if not _remote(path):
        return open(path, "r", encoding="utf-8")
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return io.StringIO(handle.read().decode("utf-8"))


def read_class_texts(input_dir: str, class_names_file: Optional[str] = None) -> Dict[str, str]:
    """synset -> human-readable class text, from LOC_synset_mapping.txt / synset_words.txt if present."""
    candidates = [class_names_file] if class_names_file else [_join(input_dir, n) for n in CLASS_TEXT_FILES]
    for path in candidates:
        if path and _is_file(path):
            texts = {}
            with _open_text(path) as handle:
                for line in handle:
                    synset, _, text = line.strip().partition(" ")
                    if synset:
                        texts[synset] = text.strip() or synset
            return texts
        if class_names_file:
            raise UserError(f"--class-names file {path!r} does not exist")
    return {}


def read_val_labels(path: str, filenames: Sequence[str]) -> List[str]:
    """The synset of each validation file (in the order given), from either label file format."""
    if not _is_file(path):
        raise UserError(f"--val-labels file {path!r} does not exist; expected LOC_val_solution.csv or a text "
                        f"file with one synset per line")
    with _open_text(path) as handle:
        first = handle.readline()
        handle.seek(0)
        if first.replace(" ", "").startswith("ImageId,PredictionString"):
            by_id = {}
            for row in csv.DictReader(handle):
                tokens = (row.get("PredictionString") or "").split()
                if tokens:
                    by_id[row["ImageId"].strip()] = tokens[0]
            synsets = []
            for name in filenames:
                image_id = os.path.splitext(name)[0]
                if image_id not in by_id:
                    raise UserError(f"{path} has no label for validation image {image_id}")
                synsets.append(by_id[image_id])
            return synsets
        lines = [line.strip().split()[0] for line in handle if line.strip()]
    if len(lines) != len(filenames):
        raise UserError(f"{path} has {len(lines)} synsets but val/ holds {len(filenames)} images; expected one "
                        f"synset per line for every validation image in sorted file-name order")
    return lines


def list_imagenet(input_dir: str, val_labels: Optional[str] = None, label_offset: int = 0,
                  class_names_file: Optional[str] = None):
    """(synsets, class texts, {split: [ImageItem]}) for an extracted ILSVRC2012 folder."""
    train_dir, val_dir = _join(input_dir, "train"), _join(input_dir, "val")
    if not _is_dir(input_dir):
        raise UserError(f"ImageNet input {input_dir!r} does not exist; expected a folder with train/<synset>/*.JPEG")
    if not _is_dir(train_dir):
        raise UserError(f"{input_dir!r} has no train/ folder; expected train/<synset>/*.JPEG")
    synsets = _subfolders(train_dir)
    if not synsets:
        raise UserError(f"{train_dir} has no synset folders; expected train/<synset>/*.JPEG")
    label_of = {synset: index + label_offset for index, synset in enumerate(synsets)}
    texts = read_class_texts(input_dir, class_names_file)
    items: Dict[str, List[ImageItem]] = {"train": [], "validation": []}

    def add(split, relative_folder, name, synset):
        path = _join(_join(input_dir, relative_folder), name)
        items[split].append(ImageItem(split, os.path.join(relative_folder, name), path, label_of[synset], synset,
                                      texts.get(synset, synset)))

    for synset in synsets:
        for name in _image_files(_join(train_dir, synset)):
            add("train", os.path.join("train", synset), name, synset)
    if not _is_dir(val_dir):
        raise UserError(f"{input_dir!r} has no val/ folder; expected val/<synset>/*.JPEG or flat "
                        f"val/*.JPEG with --val-labels")
    val_synsets = _subfolders(val_dir)
    if val_synsets:
        for synset in val_synsets:
            if synset not in label_of:
                raise UserError(f"validation synset {synset} (val/{synset}/) has no training folder train/{synset}/")
            for name in _image_files(_join(val_dir, synset)):
                add("validation", os.path.join("val", synset), name, synset)
    else:
        names = _image_files(val_dir)
        if names and not val_labels:
            raise UserError("val/ holds flat ILSVRC2012_val_*.JPEG files; pass --val-labels with "
                            "LOC_val_solution.csv or a file with one synset per line")
        for name, synset in zip(names, read_val_labels(val_labels, names) if names else []):
            if synset not in label_of:
                raise UserError(f"validation label {synset} (for {name}) has no training folder train/{synset}/")
            add("validation", "val", name, synset)
    return synsets, [texts.get(s, s) for s in synsets], items
