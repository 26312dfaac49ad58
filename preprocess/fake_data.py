"""Every generator of fake data, in one place: images made here, written in the official formats.

- Pattern images (`pattern_dataset`): 10 classes, five stripe/texture patterns times two palettes, each
  randomly jittered, for the offline demo (written as a genuine cifar-10-python.tar.gz).
- Toy datasets (`write_toy_dataset`): a colour and a stripe orientation per class, as a finished
  dataset folder (TFRecords + metadata.json) for trainer tests and `benchmark train`.
- Photo patches (`write_photo_patch_archive`): crops of the two photographs shipped with matplotlib,
  8 classes, as a cifar-10-python.tar.gz for the learning run on real images.
- An ILSVRC2012-layout folder (`write_imagenet_tree`) with the troublemakers the real dataset is known
  for: a CMYK JPEG, a PNG named `.JPEG`, a grayscale JPEG (converted), a truncated JPEG and an empty
  file (rejected); validation as val/<synset>/ or flat with both label-file formats.
- Folders of one's own images (`write_folder_tree`, `folder_image_file`): classes of every format and mode a
  folder dataset reads (JPEG, PNG, BMP, GIF, WebP, TIFF; EXIF-rotated, CMYK, 16-bit, palette with alpha,
  an animated GIF), with the expected RGB pixels of each, and the troublemakers of a user's disk.
- A validation split of PNG and JPEG records (`write_mixed_format_split`) for the serving tests.

Records are written with preprocess/tfrecord.py (byte-identical to TensorFlow's, without importing it).
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from revnet.common.fileio import atomic_write_json
from revnet.preprocess import tfrecord

# ------------------------------------------------------------------------------------------------
# Encoded images and finished dataset folders
# ------------------------------------------------------------------------------------------------
Record = Tuple[bytes, str, int, int, str, int, str]  # encoded, format, height, width, filename, label, text


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(pixels: np.ndarray, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_record_dataset(out_dir: str, shards: Dict[str, List[List[Record]]], metadata: Dict) -> Dict:
    """A finished dataset folder, as `cli.py preprocess` writes it: shards per split, then metadata.json."""
    os.makedirs(out_dir, exist_ok=True)
    splits = {}
    for split, split_shards in shards.items():
        listed = []
        for index, records in enumerate(split_shards):
            name = tfrecord.shard_name(split, index, len(split_shards))
            with open(os.path.join(out_dir, name), "wb") as handle:
                for record in records:
                    tfrecord.write_record(handle, tfrecord.image_example(*record))
            listed.append({"file": name, "records": len(records)})
        count = sum(shard["records"] for shard in listed)
        splits[split] = {"read": count, "written": count, "rejected": 0, "converted": {}, "shards": listed}
    metadata = {"synsets": None, "label_offset": 0, "label": None, "pixel_mean": None, **metadata,
                "splits": splits, "complete": True}
    atomic_write_json(os.path.join(out_dir, tfrecord.METADATA_FILE), metadata)
    return metadata


# ------------------------------------------------------------------------------------------------
# Pattern images (the demo's data)
# ------------------------------------------------------------------------------------------------
PATTERNS = ("horizontal", "vertical", "diagonal", "checker", "rings")
PALETTES = {"warm": ((230, 90, 40), (250, 200, 60)), "cool": ((40, 90, 230), (60, 200, 200))}
PATTERN_LABEL_NAMES: List[str] = [f"{palette}-{pattern}" for palette in PALETTES for pattern in PATTERNS]


def _pattern(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A [size, size] field in 0..1 for one pattern kind, randomly jittered."""
    coords = np.arange(size, dtype=np.float32)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    frequency = rng.uniform(0.35, 0.6)
    phase = rng.uniform(0, 2 * np.pi)
    tilt = rng.uniform(-0.15, 0.15)
    if kind == "horizontal":
        field = np.sin(frequency * (yy + tilt * xx) + phase)
    elif kind == "vertical":
        field = np.sin(frequency * (xx + tilt * yy) + phase)
    elif kind == "diagonal":
        field = np.sin(frequency * (xx + yy) / np.sqrt(2) + phase)
    elif kind == "checker":
        field = np.sin(frequency * xx + phase) * np.sin(frequency * yy + rng.uniform(0, 2 * np.pi))
    else:
        cy, cx = rng.uniform(8, size - 8, size=2)
        field = np.sin(frequency * np.hypot(yy - cy, xx - cx) + phase)
    return (field + 1.0) / 2.0


def pattern_image(label: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    palette = list(PALETTES.values())[label // len(PATTERNS)]
    field = _pattern(PATTERNS[label % len(PATTERNS)], size, rng)[..., None]
    low, high = (np.asarray(c, np.float32) for c in palette)
    image = low + field * (high - low)
    image = image * rng.uniform(0.7, 1.1) + rng.normal(0, 18, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def pattern_dataset(num_examples: int, seed: int, size: int = 32) -> Tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, size, size, 3], labels int64 [N]) with balanced classes in shuffled order."""
    rng = np.random.default_rng(seed)
    labels = np.arange(num_examples) % len(PATTERN_LABEL_NAMES)
    rng.shuffle(labels)
    images = np.stack([pattern_image(int(label), rng, size) for label in labels]) if num_examples else \
        np.zeros((0, size, size, 3), np.uint8)
    return images, labels.astype(np.int64)


# ------------------------------------------------------------------------------------------------
# Toy datasets (trainer tests, `benchmark train`)
# ------------------------------------------------------------------------------------------------
def toy_images(num_images: int, num_classes: int, image_size: int, seed: int):
    """(uint8 images [N, S, S, 3], int labels [N]) with balanced classes; each class has its own colour and
    stripe orientation (both survive crop and flip augmentation) plus per-image noise."""
    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(1234).uniform(40, 215, size=(num_classes, 3))
    angles = np.pi * np.arange(num_classes) / num_classes
    labels = np.arange(num_images) % num_classes
    rng.shuffle(labels)
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
    images = np.empty((num_images, image_size, image_size, 3), np.uint8)
    for i, label in enumerate(labels):
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin((np.cos(angles[label]) * xx + np.sin(angles[label]) * yy) * 0.6 + phase)
        image = palette[label] + 35.0 * wave[..., None] + rng.normal(0, 20, size=(image_size, image_size, 3))
        images[i] = np.clip(image, 0, 255).astype(np.uint8)
    return images, labels


def write_toy_dataset(out_dir: str, num_train: int = 200, num_validation: int = 50, num_classes: int = 4,
                      image_size: int = 32, num_shards: int = 2, seed: int = 0) -> Dict:
    """Write train/validation PNG TFRecords and metadata.json following `preprocess.schema`; returns the
    metadata. A RevNet learns it to high accuracy in a few hundred steps."""
    shards: Dict[str, List[List[Record]]] = {}
    train_images = None
    for split_index, (split, count) in enumerate((("train", num_train), ("validation", num_validation))):
        images, labels = toy_images(count, num_classes, image_size, seed * 2 + split_index)
        train_images = images if split == "train" else train_images
        shards[split] = [[(png_bytes(images[i]), "PNG", image_size, image_size, f"{split}/{i:06d}.png",
                           int(labels[i]), f"class_{labels[i]}") for i in range(shard, count, num_shards)]
                         for shard in range(num_shards)]
    pixel_mean = train_images.mean(axis=0, dtype=np.float64).tolist() if num_train else None
    return write_record_dataset(out_dir, shards, {
        "dataset": "toy", "num_classes": num_classes, "label_names": [f"class_{k}" for k in range(num_classes)],
        "image_format": "PNG", "image_size": image_size, "pixel_mean": pixel_mean,
        "options": {"generator": "preprocess.fake_data.write_toy_dataset", "seed": seed}})


# ------------------------------------------------------------------------------------------------
# Patches of real photographs (the learning run)
# ------------------------------------------------------------------------------------------------
def matplotlib_photos() -> List[str]:
    """Paths of the real photographs that ship with matplotlib (no download needed)."""
    import matplotlib

    folder = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data")
    return [os.path.join(folder, name) for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")]


def photo_patches(count: int, seed: int, photos=None, image_size: int = 32):
    """Real-image patches: class = which quadrant of which photo a patch comes from (2 photos x 4
    quadrants = 8 classes); each is a random square crop of 1/3..2/3 of the quadrant's side resized to
    `image_size`. Returns (uint8 [count, size, size, 3], labels, label names)."""
    quadrants, names = [], []
    for path in photos or matplotlib_photos():
        photo = np.asarray(Image.open(path).convert("RGB"))
        half_h, half_w = photo.shape[0] // 2, photo.shape[1] // 2
        stem = os.path.splitext(os.path.basename(path))[0].lower()
        for row in range(2):
            for col in range(2):
                quadrants.append(photo[row * half_h:(row + 1) * half_h, col * half_w:(col + 1) * half_w])
                names.append(f"{stem}-{('top', 'bottom')[row]}-{('left', 'right')[col]}")
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % len(quadrants)
    rng.shuffle(labels)
    images = np.zeros((count, image_size, image_size, 3), np.uint8)
    for index, label in enumerate(labels):
        quadrant = quadrants[label]
        side = int(rng.uniform(1 / 3, 2 / 3) * min(quadrant.shape[:2]))
        top = rng.integers(0, quadrant.shape[0] - side + 1)
        left = rng.integers(0, quadrant.shape[1] - side + 1)
        patch = Image.fromarray(quadrant[top:top + side, left:left + side]).resize((image_size, image_size),
                                                                                  Image.BILINEAR)
        images[index] = np.asarray(patch)
    return images, labels.astype(np.int64), names


def write_photo_patch_archive(path: str, num_train: int = 4000, num_validation: int = 800, seed: int = 0) -> str:
    """The photo-quadrant patches written as a genuine cifar-10-python.tar.gz (8 classes), so the
    learning run goes through `cli.py preprocess cifar-10` like real CIFAR data."""
    from revnet.preprocess.sources.cifar import write_cifar10_archive

    train_images, train_labels, names = photo_patches(num_train, seed * 2 + 100)
    val_images, val_labels, _ = photo_patches(num_validation, seed * 2 + 101)
    return write_cifar10_archive(path, train_images, train_labels, val_images, val_labels, names)


# ------------------------------------------------------------------------------------------------
# An ILSVRC2012-layout folder (pipeline tests, `benchmark preprocess`)
# ------------------------------------------------------------------------------------------------
SPECIALS = ("cmyk", "png", "grayscale", "truncated", "empty")


def _imagenet_image(rng: np.random.Generator, class_index: int, size_range=(48, 96)) -> Image.Image:
    height, width = (int(rng.integers(*size_range)), int(rng.integers(*size_range)))
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * (class_index + 1) * 3) % 256, (yy * 5 + class_index * 40) % 256,
                     np.full_like(xx, 60 * class_index % 256)], axis=-1)
    noise = rng.integers(0, 40, size=base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def _special(kind: str, image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    if kind == "cmyk":
        image.convert("CMYK").save(buffer, format="JPEG", quality=90)
    elif kind == "png":
        image.save(buffer, format="PNG")
    elif kind == "grayscale":
        image.convert("L").save(buffer, format="JPEG", quality=90)
    elif kind == "truncated":
        data = jpeg_bytes(np.asarray(image), quality=90)
        return data[: len(data) // 2]
    elif kind == "empty":
        return b""
    return buffer.getvalue()


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def synset_names(num_classes: int) -> List[str]:
    return [f"n{1440764 + 1000 * index:08d}" for index in range(num_classes)]


def write_imagenet_tree(root: str, num_classes: int = 3, train_per_class: int = 6, val_per_class: int = 2,
                        val_layout: str = "folders", specials: bool = True, seed: int = 0,
                        size_range=(48, 96)) -> Dict[str, object]:
    """Write the tree; returns {"synsets", "val_synsets" (sorted file-name order), "specials": {kind: path},
    "train_files", "val_files"}."""
    rng = np.random.default_rng(seed)
    synsets = synset_names(num_classes)
    train_files, val_files, special_paths = 0, 0, {}
    for index, synset in enumerate(synsets):
        for number in range(train_per_class):
            path = os.path.join(root, "train", synset, f"{synset}_{number + 1}.JPEG")
            _write(path, jpeg_bytes(np.asarray(_imagenet_image(rng, index, size_range)), quality=90))
            train_files += 1
    if specials:
        for number, kind in enumerate(SPECIALS):
            synset = synsets[number % num_classes]
            path = os.path.join(root, "train", synset, f"{synset}_{9000 + number}.JPEG")
            _write(path, _special(kind, _imagenet_image(rng, synsets.index(synset), size_range)))
            special_paths[kind] = path
            train_files += 1
    val_synsets = []
    for number in range(num_classes * val_per_class):
        index = int(rng.integers(0, num_classes)) if number >= num_classes else number
        name = f"ILSVRC2012_val_{number + 1:08d}.JPEG"
        folder = os.path.join(root, "val", synsets[index]) if val_layout == "folders" else os.path.join(root, "val")
        _write(os.path.join(folder, name), jpeg_bytes(np.asarray(_imagenet_image(rng, index, size_range)), quality=90))
        val_synsets.append(synsets[index])
        val_files += 1
    with open(os.path.join(root, "LOC_synset_mapping.txt"), "w", encoding="utf-8") as handle:
        for index, synset in enumerate(synsets):
            handle.write(f"{synset} class {index}, thing {index}\n")
    if val_layout != "folders":
        # Kaggle's CSV lists images in no particular order; the text format is in sorted file-name order.
        rows = [(f"ILSVRC2012_val_{n + 1:08d}", s) for n, s in enumerate(val_synsets)]
        with open(os.path.join(root, "LOC_val_solution.csv"), "w", encoding="utf-8") as handle:
            handle.write("ImageId,PredictionString\n")
            for image_id, synset in reversed(rows):
                handle.write(f"{image_id},{synset} 10 20 30 40 {synset} 1 2 3 4 \n")
        with open(os.path.join(root, "val_synsets.txt"), "w", encoding="utf-8") as handle:
            handle.write("".join(f"{synset}\n" for synset in val_synsets))
    return {"synsets": synsets, "val_synsets": val_synsets, "specials": special_paths,
            "train_files": train_files, "val_files": val_files}


# ------------------------------------------------------------------------------------------------
# Folders of one's own images (folder dataset tests)
# ------------------------------------------------------------------------------------------------
# (file extension, how it is written). Each kind decodes to known RGB pixels; "jpeg" is lossy, the others exact.
FOLDER_KINDS = {"jpeg": ".jpg", "png": ".png", "bmp": ".bmp", "gif": ".gif", "webp": ".webp", "tiff": ".tif",
                "exif-rotated": ".jpeg", "cmyk": ".jpg", "gray16": ".png", "rgb16": ".png", "palette-alpha": ".png",
                "animated-gif": ".gif", "grayscale": ".png"}
LOSSY_KINDS = ("jpeg", "exif-rotated", "cmyk")


def _png_rgb16(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one): IHDR, one IDAT of unfiltered rows, IEND."""
    height, width, _ = pixels.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _saved(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def folder_pixels(rng: np.random.Generator, class_index: int, height: int, width: int) -> np.ndarray:
    """A smooth picture (JPEG keeps it within a few levels) that is not symmetric, so a wrong rotation shows:
    two gradients and a class colour, with a little noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([255 * xx / max(width - 1, 1), 255 * yy / max(height - 1, 1),
                     np.full_like(xx, (70 * class_index + 40) % 256)], axis=-1)
    return np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)


def folder_image_file(kind: str, pixels: np.ndarray) -> Tuple[bytes, np.ndarray]:
    """(file bytes of `kind`, the RGB pixels a viewer shows for them) from uint8 [H, W, 3] `pixels`."""
    image = Image.fromarray(pixels)
    if kind == "exif-rotated":  # stored on its side; EXIF orientation 6 says: turn 90 degrees clockwise to view
        exif = Image.Exif()
        exif[0x0112] = 6
        stored = Image.fromarray(np.rot90(pixels).copy())
        return _saved(stored, "JPEG", quality=95, subsampling=0, exif=exif.tobytes()), pixels
    if kind == "cmyk":
        return _saved(image.convert("CMYK"), "JPEG", quality=95), pixels
    if kind == "gray16":  # 16-bit grayscale: value v * 257 is 8-bit v
        gray = pixels[..., 0]
        return _saved(Image.fromarray(gray.astype(np.uint16) * 257), "PNG"), np.repeat(gray[..., None], 3, axis=2)
    if kind == "rgb16":  # 16-bit RGB: Pillow keeps the high byte
        return _png_rgb16(pixels.astype(np.uint16) * 256 + 77), pixels
    if kind == "grayscale":
        gray = pixels[..., 0]
        return _saved(Image.fromarray(gray), "PNG"), np.repeat(gray[..., None], 3, axis=2)
    if kind == "palette-alpha":  # a 4-colour palette, colour 0 transparent: composited on white
        palette = np.array([[250, 250, 250], [200, 30, 30], [30, 200, 30], [30, 30, 200]], np.uint8)
        indices = (pixels[..., 0] // 64).astype(np.uint8)
        indexed = Image.fromarray(indices, mode="L").convert("P")
        indexed.putpalette(palette.flatten().tolist() + [0] * (768 - palette.size))
        shown = palette[indices].copy()
        shown[indices == 0] = 255
        return _saved(indexed, "PNG", transparency=0), shown
    if kind in ("gif", "animated-gif"):  # GIF holds a palette: use pixels it holds exactly
        quantized = np.asarray(image.quantize(16).convert("RGB"))
        frames = Image.fromarray(quantized)
        if kind == "gif":
            return _saved(frames, "GIF"), quantized
        second = Image.fromarray(255 - quantized)
        return _saved(frames, "GIF", save_all=True, append_images=[second], duration=100), quantized
    formats = {"jpeg": ("JPEG", {"quality": 95, "subsampling": 0}), "png": ("PNG", {}), "bmp": ("BMP", {}),
               "webp": ("WEBP", {"lossless": True}), "tiff": ("TIFF", {})}
    image_format, options = formats[kind]
    return _saved(image, image_format, **options), pixels


def write_folder_tree(root: str, class_names: Sequence[str] = ("cat", "dog"), per_class: int = 6,
                      kinds: Sequence[str] = ("jpeg",), split_folders: Optional[Dict[str, int]] = None,
                      size_range=(32, 33), depth: int = 1, seed: int = 0) -> Dict[str, Dict]:
    """Write DIR/<class>/[sub/...]<image> (or DIR/<split>/<class>/..., `split_folders` = {folder: images per
    class}); kinds cycle over each class's files. Returns {relative path: {"class", "kind", "pixels"}}, pixels
    being the RGB a viewer shows (what a record must hold, up to JPEG loss where the kind is lossy)."""
    rng = np.random.default_rng(seed)
    files: Dict[str, Dict] = {}
    for split, count in (split_folders or {"": per_class}).items():
        for class_index, class_name in enumerate(class_names):
            for number in range(count):
                kind = kinds[number % len(kinds)]
                height, width = (int(rng.integers(*size_range)), int(rng.integers(*size_range)))
                data, shown = folder_image_file(kind, folder_pixels(rng, class_index, height, width))
                below = "/".join(f"sub{level}" for level in range(1, number % depth + 1))
                parts = [part for part in (split, class_name, below, f"{kind}-{number}{FOLDER_KINDS[kind]}") if part]
                _write(os.path.join(root, *parts), data)
                files["/".join(parts)] = {"class": class_name, "kind": kind, "pixels": shown}
    return files


# ------------------------------------------------------------------------------------------------
# A validation split of PNG and JPEG records (serving tests)
# ------------------------------------------------------------------------------------------------
def write_mixed_format_split(data_dir: str, label_names: Sequence[str], num_images: int = 8, seed: int = 1):
    """A validation-only dataset of random 32x32 images, PNG and JPEG alternately, labels cycling through
    `label_names`; returns (encoded images, labels)."""
    pixels = np.random.RandomState(seed).randint(0, 256, (num_images, 32, 32, 3))
    encoded = [png_bytes(p) if i % 2 == 0 else jpeg_bytes(p) for i, p in enumerate(pixels)]
    labels = [i % len(label_names) for i in range(num_images)]
    records = [(data, "PNG" if i % 2 == 0 else "JPEG", 32, 32, f"img{i}", label, label_names[label])
               for i, (data, label) in enumerate(zip(encoded, labels, strict=True))]
    write_record_dataset(data_dir, {"validation": [records]}, {
        "dataset": "cifar-10", "num_classes": len(label_names), "label_names": list(label_names), "options": {}})
    return encoded, labels
