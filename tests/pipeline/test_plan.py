"""The shard plan: default shard counts follow the images' number and size."""
import pytest

from revnet.pipeline.plan import default_shards, estimate_bytes

MB = 1 << 20


@pytest.mark.parametrize("split, images, size_bytes, expected", [
    ("train", 99, 99 * 100_000, 1),                 # fewer than 100 images: one file
    ("validation", 22, 22 * 100_000, 1),
    ("train", 50_000, 50_000 * 3072, 10),          # CIFAR-10: 150 MB, kept at the 10 files for parallel reads
    ("validation", 10_000, 10_000 * 3072, 2),
    ("train", 1_281_167, 138_000 * MB, 1024),      # ImageNet: 138 GB would be 1078 files, capped at 1024
    ("validation", 50_000, 6_400 * MB, 50),        # 6.4 GB: 50 files of 128 MB
    ("train", 2_000, 3_000 * MB, 20),              # large photos: one file per 100 images, not 24 of 128 MB
])
def test_default_shard_counts(split, images, size_bytes, expected):
    assert default_shards(split, images, size_bytes) == expected


def test_estimated_bytes_come_from_a_sample_of_file_sizes(tmp_path):
    paths = []
    for index in range(100):
        path = tmp_path / f"{index}.bin"
        path.write_bytes(b"x" * 1000)
        paths.append(str(path))
    assert estimate_bytes(paths) == 100_000
    assert estimate_bytes(paths + [str(tmp_path / "missing")]) == 101_000  # a missing file is left out of the mean
    assert estimate_bytes([]) == 0
