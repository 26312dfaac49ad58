"""numpy <-> TensorProto without TF, and the numpy image decoder against the TF evaluation path."""
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from revnet.common.errors import UserError
from revnet.serving.images import decode_image_numpy, decode_image_tf
from revnet.serving.tensors import make_ndarray, make_tensor_proto


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.int32, np.uint8])
def test_tensor_proto_is_byte_identical_to_tf(dtype):
    array = (np.arange(24).reshape(2, 3, 4) * 3).astype(dtype)
    ours = make_tensor_proto(array)
    assert ours.SerializeToString() == tf.make_tensor_proto(array).SerializeToString()
    np.testing.assert_array_equal(make_ndarray(ours), array)
    np.testing.assert_array_equal(make_ndarray(tf.make_tensor_proto(array)), array)


def test_string_and_value_list_tensors():
    assert make_ndarray(make_tensor_proto([b"a", b"bc"])) == [b"a", b"bc"]
    proto = tf.make_tensor_proto([1.5, 2.5], dtype=tf.float32)
    proto.ClearField("tensor_content")
    proto.float_val.extend([1.5, 2.5])
    np.testing.assert_array_equal(make_ndarray(proto), [1.5, 2.5])


def test_malformed_tensor_is_a_user_error():
    proto = make_tensor_proto(np.zeros((2, 2), np.float32))
    proto.tensor_content = proto.tensor_content[:-4]
    with pytest.raises(UserError, match="does not match shape"):
        make_ndarray(proto, "images")


def _png(shape):
    buffer = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 256, shape + (3,)).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("shape,size,family", [((32, 32), 32, "cifar"), ((40, 50), 32, "cifar"),
                                               ((20, 17), 32, "cifar"), ((90, 70), 64, "imagenet")])
def test_numpy_decoder_matches_the_evaluation_pipeline(shape, size, family):
    data = _png(shape)
    ours = decode_image_numpy(data, size, family)
    theirs = decode_image_tf(tf.constant(data), size, family).numpy()
    assert ours.shape == theirs.shape == (size, size, 3)
    assert np.abs(ours - theirs).max() < 0.01


def test_not_an_image():
    with pytest.raises(UserError, match="not a decodable"):
        decode_image_numpy(b"hello", 32, "cifar")
    with pytest.raises(UserError, match="empty"):
        decode_image_numpy(b"", 32, "cifar")
