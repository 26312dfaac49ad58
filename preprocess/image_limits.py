"""Bounds on one input image, shared by preprocessing and the model server (nothing heavy imported here).

40 megapixels (e.g. 7700x5200) is far above any ILSVRC2012 photo and still a bounded decode: about 160 MB
of RGB while decoding. A 420 KB PNG can declare 12000x12000 (a 430 MB decode). An input file is read
whole, so its size is bounded too: 256 MiB holds an uncompressed 40-megapixel image at 16 bits per
channel (240 MB); a compressed photo is a small fraction of it.
"""
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
DEFAULT_MAX_FILE_BYTES = 1 << 28
