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
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from common.errors import UserError

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


def _image_files(folder: str) -> List[str]:
    return sorted(name for name in os.listdir(folder)
                  if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
                  and os.path.isfile(os.path.join(folder, name)))


def _subfolders(folder: str) -> List[str]:
    return sorted(name for name in os.listdir(folder)
                  if not name.startswith(".") and os.path.isdir(os.path.join(folder, name)))


def read_class_texts(input_dir: str, class_names_file: Optional[str] = None) -> Dict[str, str]:
    """synset -> human-readable class text, from LOC_synset_mapping.txt / synset_words.txt if present."""
    candidates = [class_names_file] if class_names_file else [os.path.join(input_dir, n) for n in CLASS_TEXT_FILES]
    for path in candidates:
        if path and os.path.isfile(path):
            texts = {}
            with open(path, "r", encoding="utf-8") as handle:
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
    if not os.path.isfile(path):
        raise UserError(f"--val-labels file {path!r} does not exist; expected LOC_val_solution.csv or a text "
                        f"file with one synset per line")
    with open(path, "r", encoding="utf-8") as handle:
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
    train_dir, val_dir = os.path.join(input_dir, "train"), os.path.join(input_dir, "val")
    if not os.path.isdir(input_dir):
        raise UserError(f"ImageNet input {input_dir!r} does not exist; expected a folder with train/<synset>/*.JPEG")
    if not os.path.isdir(train_dir):
        raise UserError(f"{input_dir!r} has no train/ folder; expected train/<synset>/*.JPEG")
    synsets = _subfolders(train_dir)
    if not synsets:
        raise UserError(f"{train_dir} has no synset folders; expected train/<synset>/*.JPEG")
    label_of = {synset: index + label_offset for index, synset in enumerate(synsets)}
    texts = read_class_texts(input_dir, class_names_file)
    items: Dict[str, List[ImageItem]] = {"train": [], "validation": []}

    def add(split, folder, name, synset):
        path = os.path.join(folder, name)
        items[split].append(ImageItem(split, os.path.relpath(path, input_dir), path, label_of[synset], synset,
                                      texts.get(synset, synset)))

    for synset in synsets:
        for name in _image_files(os.path.join(train_dir, synset)):
            add("train", os.path.join(train_dir, synset), name, synset)
    if not os.path.isdir(val_dir):
        raise UserError(f"{input_dir!r} has no val/ folder; expected val/<synset>/*.JPEG or flat "
                        f"val/*.JPEG with --val-labels")
    val_synsets = _subfolders(val_dir)
    if val_synsets:
        for synset in val_synsets:
            if synset not in label_of:
                raise UserError(f"validation synset {synset} (val/{synset}/) has no training folder train/{synset}/")
            for name in _image_files(os.path.join(val_dir, synset)):
                add("validation", os.path.join(val_dir, synset), name, synset)
    else:
        names = _image_files(val_dir)
        if names and not val_labels:
            raise UserError("val/ holds flat ILSVRC2012_val_*.JPEG files; pass --val-labels with "
                            "LOC_val_solution.csv or a file with one synset per line")
        for name, synset in zip(names, read_val_labels(val_labels, names) if names else []):
            if synset not in label_of:
                raise UserError(f"validation label {synset} (for {name}) has no training folder train/{synset}/")
            add("validation", val_dir, name, synset)
    return synsets, [texts.get(s, s) for s in synsets], items
