"""numpy <-> TensorProto without TF (header checks before any array, no copies), and the numpy image
decoder against the TF evaluation path (header pixel limit, reduced-scale JPEG decoding)."""
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from revnet.common.errors import UserError
from revnet.serving.request_images import decode_image_numpy, decode_image_tf
from revnet.serving.tensors import DT_FLOAT, InputSpec, fill_tensor_proto, make_ndarray, make_tensor_proto
from testkit.reliability_helpers import fill_bomb, jpeg_bomb, png_bomb


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


# --- Reliability (issue 10 items 1, 2; issue 12 item 5; issue 9: no TensorFlow in tensors.py) ---

SPEC = InputSpec("images", DT_FLOAT, (None, 32, 32, 3), 16, "float32 (DT_FLOAT) pixels 0..255")


@pytest.mark.parametrize("shape,message", [
    ([1, 30000, 30000, 3], r"shape \[1, 30000, 30000, 3\]; expected \[batch, 32, 32, 3\]"),
    ([2 ** 54 + 1, 32, 32, 3], "exceeds the server limit of 16"),
    ([1, 2 ** 54 + 1, 32, 3], "expected \\[batch, 32, 32, 3\\]"),
    ([-1, 32, 32, 3], "empty"),
    ([0, 32, 32, 3], "empty"),
    ([1, 32, 32], "expected \\[batch, 32, 32, 3\\]"),
])
def test_fill_bombs_are_refused_from_the_header_before_any_array_exists(shape, message):
    import tracemalloc

    proto = fill_bomb(shape)
    assert len(proto.SerializeToString()) < 80  # the 47-byte bomb, give or take the dims
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=message):
            make_ndarray(proto, "images", SPEC)
        peak_bytes = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak_bytes < 1 << 20


def test_a_moderate_fill_bomb_is_not_expanded_before_the_shape_check():
    """[1, 3000, 3000, 3] would be 108 MB once filled; refusing it must allocate next to nothing."""
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(UserError, match="expected \\[batch, 32, 32, 3\\]"):
            make_ndarray(fill_bomb([1, 3000, 3000, 3]), "images", SPEC)
        peak_bytes = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak_bytes < 1 << 20


def test_header_checks_dtype_and_value_counts():
    with pytest.raises(UserError, match="must be float32 .* got DT_INT32"):
        make_ndarray(make_tensor_proto(np.zeros((1, 32, 32, 3), np.int32)), "images", SPEC)
    proto = fill_bomb([2, 32, 32, 3])
    proto.float_val.extend([1.0, 2.0])  # 3 values for 6144 elements: neither one nor all
    with pytest.raises(UserError, match="3 values but shape"):
        make_ndarray(proto, "images", SPEC)
    filled = make_ndarray(fill_bomb([2, 32, 32, 3], 7.0), "images", SPEC)  # the legitimate fill still works
    assert filled.shape == (2, 32, 32, 3) and (filled == 7.0).all()
    unspecified = fill_bomb([1, 1 << 20, 1 << 10])  # no spec: still bounded by DEFAULT_MAX_ELEMENTS
    with pytest.raises(UserError, match="elements; at most"):
        make_ndarray(unspecified)


def test_tensor_content_is_wrapped_without_a_copy_and_responses_are_filled_in_place():
    from tensorflow.core.framework import tensor_pb2

    images = np.random.RandomState(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    proto = make_tensor_proto(images)
    array = make_ndarray(proto, "images", SPEC)
    np.testing.assert_array_equal(array, images)
    assert not array.flags.owndata and not array.flags.writeable  # a view of the proto's bytes
    target = tensor_pb2.TensorProto()
    fill_tensor_proto(target, images[:, 0])  # non-contiguous view: C order bytes, like tf.make_tensor_proto
    assert target.SerializeToString() == tf.make_tensor_proto(images[:, 0]).SerializeToString()


def test_tensors_module_imports_no_tensorflow():
    import subprocess
    import sys

    code = ("import sys, numpy as np; from revnet.serving import tensors; "
            "assert 'tensorflow' not in sys.modules, 'imported TF'; print(tensors.dtype_name(1))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "DT_FLOAT", result.stderr[-2000:]


@pytest.mark.parametrize("make_bomb", [png_bomb, jpeg_bomb])
def test_decompression_bombs_are_refused_from_the_header(make_bomb):
    """12000x12000 declared by a few hundred KB: refused at the default limit, nothing decoded."""
    from revnet.preprocess.images import DEFAULT_MAX_IMAGE_PIXELS, ImageTooLarge, open_image

    assert 30_000_000 <= DEFAULT_MAX_IMAGE_PIXELS <= 50_000_000
    data = make_bomb(12000, 12000)
    with pytest.raises(ImageTooLarge, match="12000x12000 = 144,000,000 pixels exceeds the limit of 40,000,000"):
        open_image(data)
    with pytest.raises(UserError, match="exceeds the limit .*--max-image-pixels"):
        decode_image_numpy(data, 32, "cifar")


def test_the_pixel_limit_is_a_parameter_and_the_decode_stays_bounded():
    data = png_bomb(2000, 1000)  # 2 MP: legitimate under the default, a bomb under a 1 MP limit
    with pytest.raises(UserError, match="2000x1000 = 2,000,000 pixels exceeds the limit of 1,000,000"):
        decode_image_numpy(data, 32, "cifar", max_pixels=1_000_000)
    decoded = decode_image_numpy(data, 32, "cifar")
    assert decoded.shape == (32, 32, 3) and decoded.max() == 0.0


def test_far_larger_jpegs_are_decoded_at_a_reduced_scale():
    from revnet.preprocess.images import decode_rgb

    yy, xx = np.mgrid[0:1024, 0:1536]
    smooth = np.stack([xx / 6, yy / 4, (xx + yy) / 10], axis=-1).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(smooth).save(buffer, "JPEG", quality=95)
    data = buffer.getvalue()
    assert decode_rgb(data).shape == (1024, 1536, 3)
    assert decode_rgb(data, min_side=64).shape == (128, 192, 3)  # 1/8 scale keeps both sides >= 64
    assert decode_rgb(data, min_side=600).shape == (1024, 1536, 3)  # not 2x larger: decoded in full
    ours = decode_image_numpy(data, 32, "cifar")  # 1024 >= 4 * 2 * 32: reduced to 1/8, then resized
    theirs = decode_image_tf(tf.constant(data), 32, "cifar").numpy()
    assert np.abs(ours - theirs).mean() < 3.0  # a smooth image looks the same either way
