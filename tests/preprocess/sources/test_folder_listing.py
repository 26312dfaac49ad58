"""Listing a folder of one's own images: layouts, classes, the split rule, manifests, skips, rejects, errors."""
import logging
import os
import socket
import unicodedata

import pytest
from PIL import Image

from revnet.common.errors import UserError
from revnet.preprocess.fake_data import write_folder_tree
from revnet.preprocess.images import FOLDER_FORMATS
from revnet.preprocess.sources import folder

UNICODE_CLASSES = ["zebra", "Ärger", "cat house", "猫", "Zoë"]


def _by_path(listing, split=None):
    return {item.source_id: item for name, items in listing.items.items() if split in (None, name) for item in items}


def test_the_extensions_listed_are_those_pillow_reads_for_the_folder_formats():
    registered = {ext for ext, fmt in Image.registered_extensions().items() if fmt in FOLDER_FORMATS + ("MPO",)}
    assert set(folder.IMAGE_EXTENSIONS) == registered


def test_classes_at_any_depth_with_unicode_names_in_sorted_order(tmp_path):
    files = write_folder_tree(str(tmp_path), UNICODE_CLASSES, per_class=6, depth=3)
    listing = folder.list_folder(str(tmp_path))
    assert listing.layout == "classes" and listing.splits == ("train", "validation")
    assert listing.class_names == sorted(UNICODE_CLASSES)
    assert any(path.count("/") == 3 for path in files)  # some files sit two folders below their class
    items = _by_path(listing)
    assert set(items) == set(files)
    for path, info in files.items():
        assert items[path].class_name == info["class"]
        assert items[path].path == os.path.join(str(tmp_path), *path.split("/"))
        assert items[path].split == folder.hash_split(path, 0.1)
    assert not listing.rejects and not listing.skips


def test_decomposed_unicode_folder_names_are_one_class(tmp_path):
    decomposed = unicodedata.normalize("NFD", "Zoë")
    assert decomposed != "Zoë"
    write_folder_tree(str(tmp_path), [decomposed, "cat"], per_class=2)
    assert folder.list_folder(str(tmp_path)).class_names == ["Zoë", "cat"]
    write_folder_tree(str(tmp_path), ["Zoë"], per_class=2)  # both spellings beside each other
    with pytest.raises(UserError, match="differ only in Unicode normalisation"):
        folder.list_folder(str(tmp_path))


def test_split_folders_with_an_optional_test_split(tmp_path):
    files = write_folder_tree(str(tmp_path), ["a", "b"], split_folders={"train": 4, "val": 2, "test": 1})
    listing = folder.list_folder(str(tmp_path))
    assert listing.layout == "splits" and listing.splits == ("train", "validation", "test")
    expected = {"train": "train", "val": "validation", "test": "test"}
    for split, items in listing.items.items():
        for item in items:
            assert split == expected[item.source_id.split("/")[0]]
            assert item.class_name == files[item.source_id]["class"]
    assert [len(listing.items[split]) for split in listing.splits] == [8, 4, 2]


def test_train_folder_without_val_draws_validation_by_the_hash(tmp_path):
    write_folder_tree(str(tmp_path), ["a", "b"], split_folders={"train": 40})
    listing = folder.list_folder(str(tmp_path), val_fraction=0.25)
    assert listing.layout == "splits" and listing.items["validation"]
    for split, items in listing.items.items():
        assert all(folder.hash_split(item.source_id, 0.25) == split for item in items)


def test_the_split_of_a_file_never_moves_when_files_are_added(tmp_path):
    """The issue's rule: the split is a function of the file's own relative path, not of its rank."""
    write_folder_tree(str(tmp_path), ["a", "b"], per_class=30, seed=1)
    before = {item.source_id: split for split, items in folder.list_folder(str(tmp_path)).items.items()
              for item in items}
    for class_name in ("a", "b"):
        for number in range(7):  # names that sort before, between and after the old ones (jpeg-N.jpg)
            for name in (f"{number}.png", f"jpeg-{number}b.png", f"zz-{number}.png"):
                Image.new("RGB", (4, 4)).save(tmp_path / class_name / name)
    after = {item.source_id: split for split, items in folder.list_folder(str(tmp_path)).items.items()
             for item in items}
    assert len(after) == len(before) + 42
    assert {path: after[path] for path in before} == before
    assert 0 < sum(split == "validation" for split in before.values()) < len(before)


def test_the_hash_split_takes_the_fraction_asked_for():
    paths = [f"class{c}/img_{i:05d}.jpg" for c in range(5) for i in range(2000)]
    for fraction in (0.0, 0.1, 0.3):
        share = sum(folder.hash_split(path, fraction) == "validation" for path in paths) / len(paths)
        assert abs(share - fraction) < 0.015, (fraction, share)


def test_a_manifest_of_paths_and_labels(tmp_path):
    images = tmp_path / "photos"
    write_folder_tree(str(images), ["x"], per_class=4)
    names = sorted(os.listdir(images / "x"))
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (8, 8)).save(outside)
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,label,split\n"
                        f"photos/x/{names[0]},cat,train\n"
                        f"photos/x/{names[1]}, dog ,val\n"  # spaces around a cell are not part of it
                        f"photos/x/{names[2]},cat,test\n"
                        f"photos/x/{names[3]},dog,\n"
                        f"{outside},dog,train\n"
                        f"photos/x/{names[0]},cat,train\n"  # an exact repeat: once, with a warning
                        "photos/x/missing.jpg,cat,train\n", encoding="utf-8")
    listing = folder.list_folder(None, str(manifest))
    assert listing.layout == "manifest" and listing.class_names == ["cat", "dog"]
    items = _by_path(listing)
    assert items[f"photos/x/{names[1]}"].class_name == "dog" and items[f"photos/x/{names[1]}"].split == "validation"
    assert items[f"photos/x/{names[2]}"].split == "test"
    assert items[f"photos/x/{names[3]}"].split == folder.hash_split(f"photos/x/{names[3]}", 0.1)
    assert items[str(outside)].path == str(outside)
    assert items[f"photos/x/{names[0]}"].path == str(images / "x" / names[0])
    assert [r["path"] for r in listing.rejects] == [str(tmp_path / "photos/x/missing.jpg")]
    assert "No such file" in listing.rejects[0]["reason"]
    # With --input, relative paths start there instead of at the CSV's folder.
    (tmp_path / "rel.csv").write_text(f"x/{names[0]},cat\nx/{names[1]},dog\n", encoding="utf-8")
    assert {i.path for i in _by_path(folder.list_folder(str(images), str(tmp_path / "rel.csv"))).values()} == \
        {str(images / "x" / names[0]), str(images / "x" / names[1])}


@pytest.mark.parametrize("rows, message", [
    ("a.png,cat,holdout\n", "split 'holdout' is not one of"),
    ("a.png\n", "expected path,label"),
    ("a.png,cat\na.png,dog\n", "again with another label or split"),
])
def test_a_malformed_manifest_is_a_user_error_naming_the_line(tmp_path, rows, message):
    (tmp_path / "m.csv").write_text(rows, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        folder.list_folder(None, str(tmp_path / "m.csv"))


def test_files_that_are_not_images_are_skipped_and_unreadable_ones_rejected(tmp_path, monkeypatch):
    shared = tmp_path.parent / f"{tmp_path.name}-shared"
    write_folder_tree(str(shared), ["photos"], per_class=2)
    tmp_path = tmp_path / "tree"
    write_folder_tree(str(tmp_path), ["a", "b"], per_class=3)
    (tmp_path / "a" / "README.txt").write_text("notes")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "a" / "._photo.jpg").write_bytes(b"\0")  # macOS resource fork: hidden, never read
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.jpg").write_bytes(b"")  # hidden folders are not walked
    os.mkfifo(tmp_path / "a" / "pipe.jpg")
    os.mkfifo(tmp_path / "a" / "pipe.log")  # not named as an image: skipped, never opened
    os.symlink("self.jpg", tmp_path / "a" / "self.jpg")
    os.symlink("gone.png", tmp_path / "a" / "dangling.png")
    os.symlink("..", tmp_path / "b" / "parent")  # a folder link to the tree itself
    os.symlink(shared / "photos", tmp_path / "b" / "other")  # a folder link elsewhere: followed
    Image.new("RGB", (4, 4)).save(tmp_path / "stray.png")
    open(os.path.join(os.fsencode(tmp_path / "b"), b"caf\xe9.png"), "wb").write(b"x")
    monkeypatch.chdir(tmp_path / "b")
    server = socket.socket(socket.AF_UNIX)
    server.bind("sock.png")
    try:
        listing = folder.list_folder(str(tmp_path))
    finally:
        server.close()
    skipped = {os.path.relpath(s["path"], tmp_path): s["reason"] for s in listing.skips}
    assert skipped == {"a/README.txt": "not an image file (extension '.txt')", "a/.DS_Store": "hidden file",
                       "a/._photo.jpg": "hidden file", "a/pipe.log": "not an image file (extension '.log')"}
    rejected = {os.path.relpath(r["path"], tmp_path): r["reason"] for r in listing.rejects}
    assert rejected == {
        "a/pipe.jpg": "not a regular file (a FIFO)", "b/sock.png": "not a regular file (a socket)",
        "a/self.jpg": "symlink loop (Too many levels of symbolic links)",
        "a/dangling.png": "broken symlink (its target does not exist)",
        "b/parent": "symlink loop (a link to a folder that holds it)",
        "stray.png": "image outside a class folder", "b/caf\\xe9.png": "path is not valid UTF-8"}
    assert {p for p in _by_path(listing) if p.startswith("b/other/")} == \
        {f"b/other/{name}" for name in os.listdir(shared / "photos")}
    for entry in listing.skips + listing.rejects:
        assert entry["split"] in ("train", "validation")


@pytest.mark.parametrize("make, message", [
    (lambda root: write_folder_tree(root, ["cat"], per_class=3),
     "holds one class, 'cat'; a classifier needs at least two"),
    (lambda root: (write_folder_tree(root, ["a", "b"]), os.makedirs(os.path.join(root, "empty", "sub")),
                   open(os.path.join(root, "empty", "sub", "notes.txt"), "w").close()),
     r"class folder '.*/empty' holds no images"),
    (lambda root: (write_folder_tree(root, ["a", "b"]), write_folder_tree(root, ["a"], split_folders={"train": 1})),
     "mixes split folders \\(train\\) with class folders \\(a, b\\)"),
    (lambda root: write_folder_tree(root, ["a", "b"], split_folders={"val": 1}),
     "mixes split folders \\(val\\) with no train/"),
    (lambda root: write_folder_tree(root, ["a", "b"], split_folders={"train": 1, "val": 1, "validation": 1}),
     "both val/ and validation/"),
    (lambda root: (write_folder_tree(root, ["a", "b"], split_folders={"train": 1}),
                   write_folder_tree(root, ["c"], split_folders={"val": 1})),
     "class 'c' has validation or test images"),
    (lambda root: write_folder_tree(root, ["a", "line\nbreak"]), "has a control character \\('\\\\n'\\)"),
    (lambda root: open(os.path.join(root, "notes.txt"), "w").close(), "holds no images in class folders"),
])
def test_trees_that_cannot_be_a_dataset_are_user_errors(tmp_path, make, message):
    make(str(tmp_path))
    with pytest.raises(UserError, match=message):
        folder.list_folder(str(tmp_path))


def test_val_fraction_with_a_val_folder_is_refused_before_listing(tmp_path):
    write_folder_tree(str(tmp_path), ["a", "b"], split_folders={"train": 2, "val": 1})
    with pytest.raises(UserError, match="--val-fraction applies only without a validation folder"):
        folder.check_input(str(tmp_path), None, val_fraction_given=True)
    assert folder.check_input(str(tmp_path), None, val_fraction_given=False) == "splits"
    with pytest.raises(UserError, match="folder needs --input DIR"):
        folder.check_input(None, None, False)
    with pytest.raises(UserError, match="does not exist or is not a folder"):
        folder.check_input(str(tmp_path / "nope"), None, False)


def test_a_class_left_without_training_images_is_a_warning(tmp_path, caplog):
    write_folder_tree(str(tmp_path), ["a", "b"], per_class=6)
    only = tmp_path / "c"
    only.mkdir()
    # One image whose path hashes into validation at 50%.
    name = next(f"{n}.png" for n in range(100) if folder.hash_split(f"c/{n}.png", 0.5) == "validation")
    Image.new("RGB", (4, 4)).save(only / name)
    with caplog.at_level(logging.WARNING):
        listing = folder.list_folder(str(tmp_path), val_fraction=0.5)
    assert "c" in listing.class_names
    assert "class(es) 'c' of" in caplog.text and "have no training images left" in caplog.text
