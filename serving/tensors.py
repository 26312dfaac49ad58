"""TensorProto <-> numpy with numpy alone: this module imports no TensorFlow (not even its protos).

The functions read and fill any TensorProto message in place (the server's come from
tensorflow_serving.apis); only `make_tensor_proto`, a convenience for clients and tests, imports the
TensorProto class when called. `tensor_content` holds little-endian raw bytes, exactly what
`tf.make_tensor_proto` writes for numeric arrays, so the two are byte-identical; on a little-endian
machine it is wrapped with `np.frombuffer` and never copied element by element.

A request tensor is checked against an `InputSpec` (dtype, rank, every dimension, the total element
count) from its header alone, before any array exists: a 47-byte proto whose one `float_val` "fills"
a [1, 30000, 30000, 3] shape is refused, not expanded.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from revnet.common.errors import UserError

# tensorflow/core/framework/types.proto: wire values, fixed by the protocol.
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_STRING, DT_INT64 = 1, 2, 3, 4, 7, 9
NUMPY_TO_DTYPE = {
    np.dtype(np.float32): DT_FLOAT,
    np.dtype(np.float64): DT_DOUBLE,
    np.dtype(np.int32): DT_INT32,
    np.dtype(np.int64): DT_INT64,
    np.dtype(np.uint8): DT_UINT8,
}
DTYPE_TO_NUMPY = {value: key for key, value in NUMPY_TO_DTYPE.items()}
_DTYPE_NAMES = {DT_FLOAT: "DT_FLOAT", DT_DOUBLE: "DT_DOUBLE", DT_INT32: "DT_INT32", DT_UINT8: "DT_UINT8",
                DT_STRING: "DT_STRING", DT_INT64: "DT_INT64"}
_VALUE_FIELDS = {DT_FLOAT: "float_val", DT_DOUBLE: "double_val", DT_INT32: "int_val", DT_UINT8: "int_val",
                 DT_INT64: "int64_val"}
# Without a spec (clients reading responses), still never build more than this from one proto.
DEFAULT_MAX_ELEMENTS = 1 << 28
_LITTLE_ENDIAN = np.dtype("<f4") == np.dtype(np.float32)


@dataclass(frozen=True)
class InputSpec:
    """What a request input must be: `dtype` (DT_*), `dims` with None for the batch, at most `max_rows`."""
    name: str
    dtype: int
    dims: Tuple[Optional[int], ...]
    max_rows: int
    description: str  # e.g. "float32 (DT_FLOAT) pixels 0..255", for messages


def dtype_name(dtype: int) -> str:
    return _DTYPE_NAMES.get(dtype, f"DataType {dtype}")


def tensor_shape(proto) -> Tuple[int, ...]:
    return tuple(int(dim.size) for dim in proto.tensor_shape.dim)


def fill_shape(shape_proto, dims) -> None:
    """Set a TensorShapeProto's dimensions in place."""
    shape_proto.ClearField("dim")
    for size in dims:
        shape_proto.dim.add(size=int(size))


def fill_tensor_proto(proto, array) -> None:
    """Fill `proto` in place from a numeric numpy array or a list of bytes (DT_STRING): one copy of the data."""
    if isinstance(array, (list, tuple)) and all(isinstance(item, (bytes, bytearray)) for item in array):
        proto.dtype = DT_STRING
        fill_shape(proto.tensor_shape, [len(array)])
        proto.string_val.extend(bytes(item) for item in array)
        return
    array = np.asarray(array)
    if array.dtype not in NUMPY_TO_DTYPE:
        raise UserError(f"cannot encode numpy dtype {array.dtype}; expected one of {sorted(map(str, NUMPY_TO_DTYPE))}")
    proto.dtype = NUMPY_TO_DTYPE[array.dtype]
    fill_shape(proto.tensor_shape, array.shape)
    if not _LITTLE_ENDIAN or array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    proto.tensor_content = array.tobytes()  # C order, whatever the array's strides


def make_tensor_proto(array):
    """A new TensorProto for a numeric numpy array or a list of bytes (DT_STRING)."""
    from tensorflow.core.framework import tensor_pb2  # imports TensorFlow; the server never calls this

    proto = tensor_pb2.TensorProto()
    fill_tensor_proto(proto, array)
    return proto


def _element_count(shape) -> int:
    count = 1
    for size in shape:  # Python ints: a product of huge dimensions cannot wrap around as int64 would
        count *= size
    return count


def check_header(proto, spec: InputSpec) -> Tuple[int, ...]:
    """The proto's shape after checking dtype, rank and every dimension against `spec`; nothing is built."""
    if proto.tensor_shape.unknown_rank and proto.dtype == spec.dtype:
        raise UserError(f"input {spec.name!r} has an unknown rank; expected shape {_dims_text(spec)}")
    return check_shape(proto.dtype, tensor_shape(proto), spec, dtype_name(proto.dtype))


def check_shape(dtype: int, shape: Tuple[int, ...], spec: InputSpec, dtype_text: str) -> Tuple[int, ...]:
    """`shape` after checking the dtype, rank, every dimension and the row count against `spec`."""
    if dtype != spec.dtype:
        raise UserError(f"input {spec.name!r} must be {spec.description}, got {dtype_text}")
    mismatched = (want is not None and size != want for size, want in zip(shape, spec.dims, strict=True))
    if len(shape) != len(spec.dims) or any(mismatched):
        raise UserError(f"input {spec.name!r} has shape {list(shape)}; expected {_dims_text(spec)}")
    rows = shape[0]
    if rows < 1:
        raise UserError(f"the request is empty (input {spec.name!r} has shape {list(shape)}); expected at least "
                        "one row")
    if rows > spec.max_rows:
        raise UserError(f"a request of {rows} rows exceeds the server limit of {spec.max_rows} (--max-request-rows)")
    return shape


def _dims_text(spec: InputSpec) -> str:
    return "[" + ", ".join("batch" if size is None else str(size) for size in spec.dims) + "]"


def make_ndarray(proto, name: str = "tensor", spec: Optional[InputSpec] = None,
                 max_elements: int = DEFAULT_MAX_ELEMENTS):
    """numpy array (or list of bytes for DT_STRING) from a TensorProto; UserError on malformed input.

    With `spec` the header is checked against it first. A numeric `tensor_content` is wrapped without a
    copy (the array is read-only and shares the proto's bytes).
    """
    if spec is not None:
        shape = check_header(proto, spec)
        name = spec.name
    else:
        shape = tensor_shape(proto)
    if any(size < 0 for size in shape):
        raise UserError(f"input {name!r} has an unknown dimension in shape {list(shape)}; expected a fully "
                        "defined shape")
    count = _element_count(shape)
    if count > max_elements:
        raise UserError(f"input {name!r} of shape {list(shape)} has {count:,} elements; at most "
                        f"{max_elements:,} allowed")
    if proto.dtype == DT_STRING:
        if len(proto.string_val) != count:
            raise UserError(f"input {name!r} has {len(proto.string_val)} strings but shape {list(shape)}")
        return list(proto.string_val)
    if proto.dtype not in DTYPE_TO_NUMPY:
        raise UserError(f"input {name!r} has unsupported dtype {dtype_name(proto.dtype)}")
    dtype = DTYPE_TO_NUMPY[proto.dtype]
    content = proto.tensor_content  # read once: each access may copy the bytes
    if content:
        if len(content) != count * dtype.itemsize:
            raise UserError(f"input {name!r} holds {len(content)} bytes, which does not match shape "
                            f"{list(shape)} of {dtype_name(proto.dtype)}")
        array = np.frombuffer(content, dtype=dtype.newbyteorder("<"))
        return (array if _LITTLE_ENDIAN else array.astype(dtype)).reshape(shape)
    values = getattr(proto, _VALUE_FIELDS[proto.dtype])
    fills = len(values) == 1 and count > 1  # TF's convention: one value fills the tensor (count is bounded above)
    if not fills and len(values) != count:
        raise UserError(f"input {name!r} has {len(values)} values but shape {list(shape)} needs {count}")
    try:
        if fills:
            return np.full(shape, values[0], dtype=dtype)
        return np.fromiter(values, dtype=dtype, count=count).reshape(shape)
    except (OverflowError, ValueError) as error:
        raise UserError(f"input {name!r} has a value that does not fit {dtype_name(proto.dtype)} ({error})") from None
