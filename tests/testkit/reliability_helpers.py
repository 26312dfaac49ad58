"""Hostile inputs for the reliability tests: decompression bombs, fill bombs and raw HTTP requests."""
import io
import socket
import struct
import zlib

import numpy as np


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int) -> bytes:
    """A valid all-black RGB PNG: tiny on the wire (about 1 KB per megapixel), width*height*3 bytes decoded."""
    compressor, row = zlib.compressobj(9), b"\0" * (1 + 3 * width)  # filter byte 0, then the row's pixels
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def jpeg_bomb(width: int, height: int) -> bytes:
    """A 16x16 baseline JPEG whose frame header claims width x height (a decoder allocates the full frame)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")  # SOF0: marker, length (2), precision (1), height (2), width (2)
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def fill_bomb(shape, value: float = 1.0):
    """A DT_FLOAT TensorProto of `shape` holding one float_val (TF's "one value fills the tensor")."""
    from tensorflow.core.framework import tensor_pb2

    from revnet.serving.tensors import DT_FLOAT, fill_shape

    proto = tensor_pb2.TensorProto(dtype=DT_FLOAT, float_val=[value])
    fill_shape(proto.tensor_shape, shape)
    return proto


def raw_http(port: int, head: bytes, body: bytes = b"", timeout: float = 10.0, shut_write: bool = False) -> bytes:
    """Send raw bytes to 127.0.0.1:port and return everything the server answers until it closes (or timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(head + body)
            if shut_write:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed early; its answer is still to be read
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if _complete(b"".join(chunks)):
                    break
        except socket.timeout:
            pass
        return b"".join(chunks)


def _complete(response: bytes) -> bool:
    head, separator, body = response.partition(b"\r\n\r\n")
    if not separator:
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def http_status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0


def post_head(path: str, content_length: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {content_length}\r\n\r\n").encode()
