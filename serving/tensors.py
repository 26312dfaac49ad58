"""TensorProto <-> numpy without TensorFlow, so the serving hot path never touches TF.

Only the dtypes the serving API needs. `tensor_content` holds little-endian raw bytes, which is
exactly what `tf.make_tensor_proto` writes for numeric arrays, so the two are byte-identical.
"""
from __future__ import annotations

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from revnet.common.errors import UserError

NUMPY_TO_DTYPE = {
    np.dtype(np.float32): types_pb2.DT_FLOAT,
    np.dtype(np.float64): types_pb2.DT_DOUBLE,
    np.dtype(np.int32): types_pb2.DT_INT32,
    np.dtype(np.int64): types_pb2.DT_INT64,
    np.dtype(np.uint8): types_pb2.DT_UINT8,
}
DTYPE_TO_NUMPY = {value: key for key, value in NUMPY_TO_DTYPE.items()}
_VALUE_FIELDS = {types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val",
                 types_pb2.DT_INT32: "int_val", types_pb2.DT_UINT8: "int_val", types_pb2.DT_INT64: "int64_val"}


def dtype_name(dtype: int) -> str:
    return types_pb2.DataType.Name(dtype)


def shape_proto(dims) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in dims])


def make_tensor_proto(array) -> tensor_pb2.TensorProto:
    """A TensorProto for a numeric numpy array or a list of bytes (DT_STRING)."""
    if isinstance(array, (list, tuple)) and all(isinstance(item, (bytes, bytearray)) for item in array):
        return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape_proto([len(array)]),
                                      string_val=[bytes(item) for item in array])
    array = np.asarray(array)
    if array.dtype not in NUMPY_TO_DTYPE:
        raise UserError(f"cannot encode numpy dtype {array.dtype}; expected one of {sorted(map(str, NUMPY_TO_DTYPE))}")
    return tensor_pb2.TensorProto(dtype=NUMPY_TO_DTYPE[array.dtype], tensor_shape=shape_proto(array.shape),
                                  tensor_content=np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes())


def tensor_shape(proto: tensor_pb2.TensorProto):
    return tuple(int(dim.size) for dim in proto.tensor_shape.dim)


def make_ndarray(proto: tensor_pb2.TensorProto, name: str = "tensor"):
    """numpy array (or list of bytes for DT_STRING) from a TensorProto; UserError on malformed input."""
    shape = tensor_shape(proto)
    if any(size < 0 for size in shape):
        raise UserError(f"input {name!r} has an unknown dimension in shape {list(shape)}; expected a fully defined shape")
    count = int(np.prod(shape)) if shape else 1
    if proto.dtype == types_pb2.DT_STRING:
        values = list(proto.string_val)
        if len(values) != count:
            raise UserError(f"input {name!r} has {len(values)} strings but shape {list(shape)}")
        return values
    if proto.dtype not in DTYPE_TO_NUMPY:
        raise UserError(f"input {name!r} has unsupported dtype {dtype_name(proto.dtype)}")
    dtype = DTYPE_TO_NUMPY[proto.dtype]
    if proto.tensor_content:
        if len(proto.tensor_content) != count * dtype.itemsize:
            raise UserError(f"input {name!r} holds {len(proto.tensor_content)} bytes, which does not match shape "
                            f"{list(shape)} of {dtype_name(proto.dtype)}")
        return np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    values = np.asarray(getattr(proto, _VALUE_FIELDS[proto.dtype]), dtype=dtype)
    if values.size == 1 and count > 1:  # TF's convention: a single value fills the tensor
        values = np.full(count, values[0], dtype=dtype)
    if values.size != count:
        raise UserError(f"input {name!r} has {values.size} values but shape {list(shape)} needs {count}")
    return values.reshape(shape)
