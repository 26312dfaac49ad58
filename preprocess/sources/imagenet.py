"""ILSVRC2012 as extracted on disk: listing the images and mapping them to labels.

    INPUT/train/<synset>/*.JPEG
    INPUT/val/<synset>/*.JPEG                     or  INPUT/val/ILSVRC2012_val_XXXXXXXX.JPEG + --val-labels FILE
    INPUT/LOC_synset_mapping.txt (optional)       "n01440764 tench, Tinca tinca" per line: the class texts

FILE is the Kaggle LOC_val_solution.csv (ImageId,PredictionString; the first token is the synset)
or a text file with one synset per line, in sorted file-name order. Labels are 0..N-1 in sorted synset
order, plus `label_offset` (1 gives the 1..1000 convention of the classic TF ImageNet scripts).

Label and class-name files are UTF-8 (a byte-order mark is allowed); anything else is a UserError. A file
or folder whose name is not valid UTF-8 cannot be named in a record: it is listed as a reject, not a
crash. A training class folder without images is refused (it would add a class with no examples).
"""
from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence

from revnet.common import storage
from revnet.common.errors import UserError

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class ListingReject:
    """An input refused while listing (its name cannot be written into a record)."""
    split: str
    path: str  # undecodable bytes shown as \xNN escapes
    reason: str


class Listing(NamedTuple):
    synsets: List[str]
    texts: List[str]
    items: Dict[str, List[ImageItem]]
    rejects: List[ListingReject]


# Local folders and gs:// alike go through common.storage; on object stores a "folder" is a name prefix.
def _image_files(folder: str) -> List[str]:
    return [name for name in storage.children(folder)[0]
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)]


def _subfolders(folder: str) -> List[str]:
    return [name for name in storage.children(folder)[1] if not name.startswith(".")]


def _read_text_file(path: str, what: str) -> str:
    """A label or class-name file as text: UTF-8, with or without a byte-order mark."""
    data = storage.read_bytes(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        byte = data[error.start:error.start + 1]
        raise UserError(f"{what} {path!r} is not UTF-8 text (byte {error.start}: {byte!r}); save it as UTF-8") from None


def read_class_texts(input_dir: str, class_names_file: Optional[str] = None) -> Dict[str, str]:
    """synset -> human-readable class text, from LOC_synset_mapping.txt / synset_words.txt if present."""
    candidates = [class_names_file] if class_names_file else [storage.join(input_dir, n) for n in CLASS_TEXT_FILES]
    for path in candidates:
        if path and storage.is_file(path):
            texts = {}
            for line in _read_text_file(path, "class-name file").splitlines():
                synset, _, text = line.strip().partition(" ")
                if synset:
                    texts[synset] = text.strip() or synset
            return texts
    return {}


def _csv_synsets(path: str, text: str) -> Dict[str, str]:
    """ImageId -> synset from LOC_val_solution.csv; a conflicting duplicate is an error, an exact one a warning."""
    by_id: Dict[str, str] = {}
    duplicates = 0
    for row in csv.DictReader(io.StringIO(text)):
        tokens = (row.get("PredictionString") or "").split()
        if not tokens:
            continue
        image_id = (row.get("ImageId") or "").strip()
        if image_id in by_id:
            if by_id[image_id] != tokens[0]:
                raise UserError(f"{path} labels validation image {image_id} twice, as {by_id[image_id]} and "
                                f"{tokens[0]}; expected one synset per ImageId")
            duplicates += 1
        by_id[image_id] = tokens[0]
    if duplicates:
        log.warning("%s repeats %d ImageId row(s) with the same synset; using each once", path, duplicates)
    return by_id


def read_val_labels(path: str, filenames: Sequence[str]) -> List[str]:
    """The synset of each validation file (in the order given), from either label file format."""
    text = _read_text_file(path, "--val-labels file")
    if text.split("\n", 1)[0].replace(" ", "").startswith("ImageId,PredictionString"):
        by_id = _csv_synsets(path, text)
        synsets = []
        for name in filenames:
            image_id = os.path.splitext(name)[0]
            if image_id not in by_id:
                raise UserError(f"{path} has no label for validation image {image_id}")
            synsets.append(by_id[image_id])
        return synsets
    lines = [line.strip().split()[0] for line in text.splitlines() if line.strip()]
    if len(lines) != len(filenames):
        raise UserError(f"{path} has {len(lines)} synsets but val/ holds {len(filenames)} images; expected one "
                        f"synset per line for every validation image in sorted file-name order")
    return lines


def check_input(input_dir: Optional[str], val_labels: Optional[str] = None,
                class_names_file: Optional[str] = None) -> None:
    """A UserError if the input folder or a label file named is missing (cheap: before the job starts)."""
    if not input_dir:
        raise UserError("imagenet needs --input: the extracted ILSVRC2012 folder with train/<synset>/*.JPEG "
                        "(it cannot be downloaded automatically)")
    if not storage.is_dir(input_dir):
        raise UserError(f"ImageNet input {input_dir!r} does not exist; expected a folder with train/<synset>/*.JPEG")
    if not storage.is_dir(storage.join(input_dir, "train")):
        raise UserError(f"{input_dir!r} has no train/ folder; expected train/<synset>/*.JPEG")
    if val_labels and not storage.is_file(val_labels):
        raise UserError(f"--val-labels file {val_labels!r} does not exist; expected LOC_val_solution.csv or a text "
                        f"file with one synset per line")
    if class_names_file and not storage.is_file(class_names_file):
        raise UserError(f"--class-names file {class_names_file!r} does not exist")


def list_imagenet(input_dir: str, val_labels: Optional[str] = None, label_offset: int = 0,
                  class_names_file: Optional[str] = None) -> Listing:
    """The classes, their texts, every image per split, and the inputs refused while listing."""
    join = storage.join
    train_dir, val_dir = join(input_dir, "train"), join(input_dir, "val")
    check_input(input_dir, val_labels, class_names_file)
    rejects: List[ListingReject] = []

    def usable(split, folder, names):
        """The names that are valid UTF-8; the others become rejects (a record stores the name as UTF-8)."""
        for name in names:
            if not storage.is_utf8(name):
                rejects.append(ListingReject(split, storage.printable(join(folder, name)),
                                             "file name is not valid UTF-8"))
        return [name for name in names if storage.is_utf8(name)]

    def reject_folder(split, folder, names):
        for name in names:
            rejects.append(ListingReject(split, storage.printable(join(folder, name)),
                                         "folder name is not valid UTF-8"))

    class_files: Dict[str, List[str]] = {}
    for synset in _subfolders(train_dir):
        names = _image_files(join(train_dir, synset))
        if not storage.is_utf8(synset):
            reject_folder("train", join(train_dir, synset), names)
        elif not names:
            raise UserError(f"training class folder {join(train_dir, synset)!r} holds no images "
                            f"({', '.join(IMAGE_EXTENSIONS)}); remove it or fill it: it would add a class "
                            f"with no examples")
        else:
            class_files[synset] = names
    synsets = list(class_files)
    if not synsets:
        raise UserError(f"{train_dir} has no synset folders; expected train/<synset>/*.JPEG")
    label_of = {synset: index + label_offset for index, synset in enumerate(synsets)}
    texts = read_class_texts(input_dir, class_names_file)
    items: Dict[str, List[ImageItem]] = {"train": [], "validation": []}

    def add(split, relative_folder, name, synset):
        path = join(join(input_dir, relative_folder), name)
        items[split].append(ImageItem(split, os.path.join(relative_folder, name), path, label_of[synset], synset,
                                      texts.get(synset, synset)))

    for synset in synsets:
        for name in usable("train", join(train_dir, synset), class_files[synset]):
            add("train", os.path.join("train", synset), name, synset)
    if not storage.is_dir(val_dir):
        raise UserError(f"{input_dir!r} has no val/ folder; expected val/<synset>/*.JPEG or flat "
                        f"val/*.JPEG with --val-labels")
    val_synsets = _subfolders(val_dir)
    if val_synsets:
        for synset in val_synsets:
            folder = join(val_dir, synset)
            if not storage.is_utf8(synset):
                reject_folder("validation", folder, _image_files(folder))
                continue
            if synset not in label_of:
                raise UserError(f"validation synset {synset} (val/{synset}/) has no training folder train/{synset}/")
            for name in usable("validation", folder, _image_files(folder)):
                add("validation", os.path.join("val", synset), name, synset)
    else:
        names = usable("validation", val_dir, _image_files(val_dir))
        if names and not val_labels:
            raise UserError("val/ holds flat ILSVRC2012_val_*.JPEG files; pass --val-labels with "
                            "LOC_val_solution.csv or a file with one synset per line")
        for name, synset in zip(names, read_val_labels(val_labels, names) if names else [], strict=True):
            if synset not in label_of:
                raise UserError(f"validation label {synset} (for {name}) has no training folder train/{synset}/")
            add("validation", "val", name, synset)
    return Listing(synsets, [texts.get(s, s) for s in synsets], items, rejects)
