"""An independent forward pass of the original code's networks, written from the documented checkpoint
layout and numerics (variable names, BN eps 1e-3 with biased batch variance, TF SAME padding, avg-pool +
symmetric zero-pad shortcuts, 1x1 projections, RevNet split x1 = first half), reading every weight by its
original name. It shares no code with revnet.models. The fixture tests check it against the original
code's own logits; then it stands in for the original on architectures without a fixture.

`Weights` in "make" mode creates a random tensor for each name on first use, so running the forward pass
once writes a complete original-layout checkpoint for any architecture.
"""
import numpy as np
import tensorflow as tf

EPSILON = 1e-3


class Weights:
    """Tensors by original name; with `rng`, missing ones are created (plausible random values)."""

    def __init__(self, tensors=None, rng=None):
        self.tensors = dict(tensors or {})
        self.rng = rng

    def __call__(self, name, shape, kind):
        if name not in self.tensors:
            if self.rng is None:
                raise KeyError(name)
            self.tensors[name] = self._random(shape, kind)
        return tf.constant(self.tensors[name], tf.float32)

    def _random(self, shape, kind):
        rng = self.rng
        if kind == "conv":
            value = rng.normal(0.0, np.sqrt(2.0 / (shape[0] * shape[1] * shape[3])), shape)
        elif kind == "gamma":
            value = rng.uniform(0.5, 1.5, shape)
        elif kind == "ema_var":
            value = rng.uniform(0.5, 2.0, shape)
        elif kind == "dense":
            value = rng.uniform(-1.0, 1.0, shape) * np.sqrt(3.0 / shape[0])
        else:  # beta, ema_mean, bias
            value = rng.normal(0.0, 0.1, shape)
        return value.astype(np.float32)


def _bn(w, scope, x, training):
    channels = int(x.shape[-1])
    gamma, beta = w(scope + "/gamma", [channels], "gamma"), w(scope + "/beta", [channels], "beta")
    ema_mean, ema_var = w(scope + "/ema_mean", [channels], "ema_mean"), w(scope + "/ema_var", [channels], "ema_var")
    mean, var = tf.nn.moments(x, [0, 1, 2]) if training else (ema_mean, ema_var)
    return tf.nn.relu(tf.nn.batch_normalization(x, mean, var, beta, gamma, EPSILON))


def _conv(w, scope, x, size, cin, cout, stride):
    return tf.nn.conv2d(x, w(scope + "/w", [size, size, cin, cout], "conv"), [1, stride, stride, 1], "SAME")


def _inner(w, scope, x, cin, cout, stride, no_activation, bottleneck, training):
    if not no_activation:
        x = _bn(w, scope + "sub1/bn1", x, training)
    if not bottleneck:
        x = _conv(w, scope + "sub1/conv1", x, 3, cin, cout, stride)
        return _conv(w, scope + "sub2/conv2", _bn(w, scope + "sub2/bn2", x, training), 3, cout, cout, 1)
    x = _conv(w, scope + "sub1/conv1", x, 1, cin, cout // 4, stride)
    x = _conv(w, scope + "sub2/conv2", _bn(w, scope + "sub2/bn2", x, training), 3, cout // 4, cout // 4, 1)
    return _conv(w, scope + "sub3/conv3", _bn(w, scope + "sub3/bn3", x, training), 1, cout // 4, cout, 1)


def _shortcut(w, scope, x, cin, cout, stride, bottleneck):
    if bottleneck:
        return _conv(w, scope + "project", x, 1, cin, cout, stride) if stride > 1 or cin != cout else x
    if stride > 1:
        x = tf.nn.avg_pool2d(x, stride, stride, "VALID")
    if cin < cout:
        x = tf.pad(x, [[0, 0], [0, 0], [0, 0], [(cout - cin) // 2, (cout - cin) // 2]])
    return x


def forward(w, spec, x, training):
    """Logits of the original network `spec` (dict: architecture, bottleneck, family, units, filters,
    num_classes) on input `x` already normalised the original's way."""
    imagenet = spec["family"] == "imagenet"
    filters = list(spec["filters"])
    strides = (1, 2, 2, 2) if imagenet else (1, 2, 2)
    h = _conv(w, "Model/init/init_conv", tf.constant(x, tf.float32), 7 if imagenet else 3, 3, filters[0],
              2 if imagenet else 1)
    h = _bn(w, "Model/init/init_bn", h, training)
    if imagenet:
        h = tf.nn.max_pool2d(h, 3, 2, "SAME")
    if spec["bottleneck"]:
        filters = filters[:1] + [4 * f for f in filters[1:]]
    revnet = spec["architecture"] == "revnet"
    if revnet:
        h = (h[..., :filters[0] // 2], h[..., filters[0] // 2:])
    for stage, count in enumerate(spec["units"]):
        for index in range(count):
            cin, cout = (filters[stage] if index == 0 else filters[stage + 1]), filters[stage + 1]
            stride, no_activation = (strides[stage] if index == 0 else 1), stage == 0 and index == 0
            scope = f"Model/unit_{stage + 1}_{index}/"
            args = (spec["bottleneck"], training)
            if not revnet:
                h = (_inner(w, scope, h, cin, cout, stride, no_activation, *args)
                     + _shortcut(w, scope, h, cin, cout, stride, spec["bottleneck"]))
                continue
            x1, x2 = h
            half_in, half_out = cin // 2, cout // 2
            y1 = (_inner(w, scope + "f/", x2, half_in, half_out, stride, no_activation, *args)
                  + _shortcut(w, scope + "x1_bottleneck/", x1, half_in, half_out, stride, spec["bottleneck"]))
            y2 = (_inner(w, scope + "g/", y1, half_out, half_out, 1, False, *args)
                  + _shortcut(w, scope + "x2_bottleneck/", x2, half_in, half_out, stride, spec["bottleneck"]))
            h = (y1, y2)
    if revnet:
        h = tf.concat(h, axis=3)
    h = tf.reduce_mean(_bn(w, "Model/unit_last/final_bn", h, training), [1, 2])
    channels = int(h.shape[-1])
    logit_w = w("Model/logit/w", [channels, spec["num_classes"]], "dense")
    return (tf.matmul(h, logit_w) + w("Model/logit/b", [spec["num_classes"]], "bias")).numpy()


def original_input(pixels, family, cifar_mean):
    """The original data pipeline's output for raw pixels (CIFAR: minus the mean; ImageNet: [-1, 1])."""
    pixels = np.asarray(pixels, np.float32)
    if family == "imagenet":
        return (pixels * np.float32(1.0 / 255.0) - np.float32(0.5)) * np.float32(2.0)
    return (pixels.astype(np.float64) - np.asarray(cifar_mean)).astype(np.float32)
