"""The graph the export serves: the trained network's inference function, rebuilt for inference.

Training keeps its `tf.while_loop`s (that is where the reversible memory saving lives); serving gains
nothing from them, so the export reads the model's variables once and builds a separate program:

- every reversible stage unrolled: the block count is static, the stacked weights are sliced here;
- every batch norm that follows a convolution folded into that convolution's kernel and bias. The
  pre-activation BNs (BN -> ReLU -> conv, on a tensor the residual path also uses) cannot fold into
  a convolution (the ReLU sits between, and the input is shared); each is one per-channel affine
  (a multiply-add in NHWC, a depthwise 1x1 convolution with bias in NCHW);
- the input normalisation's scale (the pixel std, or 1/127.5 for the original's ImageNet [-1, 1]
  convention) folded into the stem kernel (exact, zero padding included); the mean (per channel, or the
  original CIFAR code's per-pixel mean image) is not foldable at the padded borders and stays;
- either layout: NHWC for TensorFlow (its CPU Conv2D refuses NCHW) or NCHW for ONNX, so that tf2onnx
  emits one Transpose at the entry instead of a pair around every convolution.

Weights are folded in float64 and stored as float32; the graph computes in float32 whatever the
model's dtypes. The model is only read, never changed. `tests/serving/test_inference_graph.py`
proves the program equals the model's loop forward.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf

from revnet.common.errors import UserError

LAYOUTS = ("NHWC", "NCHW")
Values = Callable[[str], np.ndarray]  # parameter name -> its value (float64), within one module


# --- the program: plain data naming folded weights -------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Conv:
    """conv(kernel, stride, SAME) [+ bias] [-> ReLU]; the bias is a folded batch norm's shift."""
    kernel: str
    stride: int
    bias: Optional[str] = None
    relu: bool = False

    def apply(self, ops: "Ops", x):
        return ops.conv(x, self)


@dataclasses.dataclass(frozen=True)
class Residual:
    """[BN-ReLU] conv (BN-ReLU conv)*: the pre-activation BN as one affine, every later BN folded."""
    pre_affine: Optional[str]
    convs: Tuple[Conv, ...]

    def apply(self, ops: "Ops", x):
        if self.pre_affine:
            x = ops.affine_relu(x, self.pre_affine)
        for conv in self.convs:
            x = conv.apply(ops, x)
        return x


@dataclasses.dataclass(frozen=True)
class Shortcut:
    """A 1x1 projection, or average-pool by the stride and zero-pad the new channels."""
    projection: Optional[Conv]
    stride: int
    pad_channels: Tuple[int, int]

    def apply(self, ops: "Ops", x):
        if self.projection:
            return self.projection.apply(ops, x)
        if self.stride > 1:
            x = ops.avg_pool(x, self.stride)
        return ops.pad_channels(x, self.pad_channels) if any(self.pad_channels) else x


@dataclasses.dataclass(frozen=True)
class ResNetUnit:
    residual: Residual
    shortcut: Shortcut

    def apply(self, ops: "Ops", x):
        return self.residual.apply(ops, x) + self.shortcut.apply(ops, x)


@dataclasses.dataclass(frozen=True)
class RevNetUnit:
    """One RevNet block on the channel halves (x1, x2); the shortcuts are identities inside a stack."""
    f: Residual
    g: Residual
    shortcut1: Optional[Shortcut] = None
    shortcut2: Optional[Shortcut] = None

    def apply(self, ops: "Ops", pair):
        x1, x2 = pair
        y1 = self.f.apply(ops, x2) + (self.shortcut1.apply(ops, x1) if self.shortcut1 else x1)
        y2 = self.g.apply(ops, y1) + (self.shortcut2.apply(ops, x2) if self.shortcut2 else x2)
        return y1, y2


@dataclasses.dataclass(frozen=True)
class Program:
    """images (raw 0..255) -> logits: mean subtraction, stem, units in order, head."""
    pixel_mean: str
    stem: Conv
    stem_max_pool: bool
    units: Tuple
    split_channels: bool  # RevNet: the units carry (x1, x2) from the stem to the head
    head_affine: str
    dense_kernel: str
    dense_bias: str

    def apply(self, ops: "Ops", images):
        x = ops.from_nhwc(images) - ops.input_mean(self.pixel_mean)
        x = self.stem.apply(ops, x)
        if self.stem_max_pool:
            x = ops.max_pool(x)
        if self.split_channels:
            x = ops.split(x)
        for unit in self.units:
            x = unit.apply(ops, x)
        if self.split_channels:
            x = ops.concat(x)
        x = ops.global_mean(ops.affine_relu(x, self.head_affine))
        return tf.matmul(x, ops.weights[self.dense_kernel]) + ops.weights[self.dense_bias]


# --- running a program in one layout -----------------------------------------------------------------
class Ops:
    """The few tensor operations a program needs, in NHWC or NCHW, over a dict of weight tensors."""

    def __init__(self, weights: Mapping[str, tf.Tensor], layout: str):
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r}; expected one of {LAYOUTS}")
        self.weights, self.layout = weights, layout
        self.channel_axis = 1 if layout == "NCHW" else 3

    def from_nhwc(self, images):
        return tf.transpose(images, [0, 3, 1, 2]) if self.layout == "NCHW" else images

    def input_mean(self, name: str):
        """The subtracted input mean: per channel [3], or a per-pixel image [H, W, 3] (in the program's layout)."""
        mean = self.weights[name]
        if self.layout != "NCHW":
            return mean
        return tf.reshape(mean, [-1, 1, 1]) if mean.shape.rank == 1 else tf.transpose(mean, [2, 0, 1])

    def channel_vector(self, name: str):
        vector = self.weights[name]
        return tf.reshape(vector, [-1, 1, 1]) if self.layout == "NCHW" else vector

    def conv(self, x, conv: Conv):
        x = tf.nn.conv2d(x, self.weights[conv.kernel], conv.stride, "SAME", data_format=self.layout)
        if conv.bias:
            x = tf.nn.bias_add(x, self.weights[conv.bias], data_format=self.layout)
        return tf.nn.relu(x) if conv.relu else x

    def affine_relu(self, x, name: str):
        scale, shift = tf.unstack(self.weights[name])
        # In ONNX a per-channel multiply-add is two broadcast ops, which int8 quantization turns into
        # QLinearMul/QLinearAdd (0.8 ms each at batch 32, more than the convolutions they sit between);
        # as a depthwise 1x1 convolution it fuses with the ReLU and quantizes to QLinearConv.
        if self.layout == "NCHW":
            kernel = tf.reshape(scale, [1, 1, -1, 1])
            x = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "VALID", data_format="NCHW")
            return tf.nn.relu(tf.nn.bias_add(x, shift, data_format="NCHW"))
        return tf.nn.relu(x * scale + shift)

    def avg_pool(self, x, stride: int):
        return tf.nn.avg_pool2d(x, stride, stride, "VALID", data_format=self.layout)

    def max_pool(self, x):
        return tf.nn.max_pool2d(x, 3, 2, "SAME", data_format=self.layout)

    def pad_channels(self, x, before_after):
        paddings = [[0, 0]] * 4
        paddings[self.channel_axis] = list(before_after)
        return tf.pad(x, paddings)

    def split(self, x):
        return tuple(tf.split(x, 2, axis=self.channel_axis))

    def concat(self, pair):
        return tf.concat(list(pair), axis=self.channel_axis)

    def global_mean(self, x):
        return tf.reduce_mean(x, axis=[2, 3] if self.layout == "NCHW" else [1, 2])


# --- folding a model into a program ------------------------------------------------------------------
class _Folder:
    """Reads a model's variables and collects the folded float32 weights under unique names."""

    def __init__(self):
        self.arrays: Dict[str, np.ndarray] = {}

    def add(self, name: str, array) -> str:
        if name in self.arrays:
            raise ValueError(f"weight {name!r} added twice")
        self.arrays[name] = np.asarray(array, np.float32)
        return name

    @staticmethod
    def bn_scale_shift(values: Values, bn: str, epsilon: float):
        """Inference batch norm as y = x * scale + shift (float64)."""
        scale = values(f"{bn}/gamma") / np.sqrt(values(f"{bn}/moving_var") + epsilon)
        return scale, values(f"{bn}/beta") - values(f"{bn}/moving_mean") * scale

    def conv_bn(self, values: Values, name: str, conv: str, bn: Optional[str], stride: int, epsilon: float,
                input_scale=None) -> Conv:
        """conv followed by inference BN (if any) as one conv with bias; `input_scale` multiplies the input channels."""
        kernel = values(f"{conv}/kernel")
        if input_scale is not None:
            kernel = kernel * input_scale[None, None, :, None]
        if bn is None:
            return Conv(self.add(f"{name}/{conv}/kernel", kernel), stride)
        scale, shift = self.bn_scale_shift(values, bn, epsilon)
        return Conv(self.add(f"{name}/{conv}/kernel", kernel * scale), stride,
                    self.add(f"{name}/{conv}/bias", shift), relu=True)

    def residual(self, fn, values: Values, name: str) -> Residual:
        from revnet.models.layers import BasicFn, BottleneckFn

        if not isinstance(fn, (BasicFn, BottleneckFn)):
            raise UserError(f"the inference graph cannot fold a {type(fn).__name__}; it knows BasicFn and BottleneckFn")
        pre = None
        if fn.preactivate:
            pre = self.add(f"{name}/bn1/scale_shift", np.stack(self.bn_scale_shift(values, "bn1", fn.epsilon)))
        conv_names = [param.name[: -len("/kernel")] for param in fn.params() if param.kind == "conv"]
        convs = []
        for index, conv in enumerate(conv_names):
            last = index == len(conv_names) - 1
            # conv_i is followed by BN-ReLU bn_{i+1}, which folds into it; the last conv ends the function.
            convs.append(self.conv_bn(values, name, conv, None if last else f"bn{index + 2}",
                                      fn.stride if index == 0 else 1, fn.epsilon))
        return Residual(pre, tuple(convs))

    def shortcut(self, shortcut, values: Values, name: str) -> Shortcut:
        if shortcut.projects:
            projection = self.conv_bn(values, name, shortcut.name, None, shortcut.stride, 0.0)
            return Shortcut(projection, shortcut.stride, (0, 0))
        extra = max(shortcut.out_channels - shortcut.in_channels, 0)
        return Shortcut(None, shortcut.stride, (extra // 2, extra - extra // 2))


def _module_values(module, index: Optional[int] = None) -> Values:
    """Parameter values of one module (one block's slice when `index` is given), read once as float64."""
    cache: Dict[str, np.ndarray] = {}

    def values(name: str) -> np.ndarray:
        if name not in cache:
            value = np.asarray(tf.convert_to_tensor(module.params[name]).numpy(), np.float64)
            cache[name] = value if index is None else value[index]
        return cache[name]

    return values


def _prefixed(values: Values, prefix: str) -> Values:
    return lambda name: values(f"{prefix}/{name}")


def fold_stack(folder: _Folder, stack, name: str):
    """A reversible stack's blocks, unrolled, each with its own slice of the stacked weights."""
    units = []
    for index in range(stack.num_blocks):
        values = _module_values(stack, index)
        block = f"{name}/block{index + 1}"
        units.append(RevNetUnit(folder.residual(stack.f, _prefixed(values, "f"), f"{block}/f"),
                                folder.residual(stack.g, _prefixed(values, "g"), f"{block}/g")))
    return units


def input_affine(model) -> Tuple[np.ndarray, np.ndarray]:
    """The model's input normalisation as (mean, per-channel scale) with normalised = (x - mean) * scale, in
    float64: the scale folds into the stem kernel (exact with zero padding: the padded zeros are zeros of
    the normalised input either way), the mean ([3] or a per-pixel [H, W, 3] image) stays a subtraction."""
    kind = model.config.input_normalization
    if kind == "symmetric":  # (x / 255 - 0.5) * 2 == (x - 127.5) / 127.5
        return np.full(3, 127.5), np.full(3, 1.0 / 127.5)
    mean = np.asarray(model.pixel_mean.numpy(), np.float64)
    if kind == "subtract_mean":
        return mean, np.ones(3)
    return mean, 1.0 / np.asarray(model.pixel_std.numpy(), np.float64)


def fold_model(model) -> Tuple[Program, Dict[str, np.ndarray]]:
    """(program, folded float32 weights) computing `model(images, training=False)`."""
    from revnet.models.resnet import ResNet
    from revnet.models.revnet import RevNet

    folder = _Folder()
    mean, scale = input_affine(model)
    stem_fn = model.stem.fn
    stem_values = _module_values(model.stem)
    stem = folder.conv_bn(stem_values, "stem", "conv", "bn", stem_fn.stride, stem_fn.epsilon, input_scale=scale)
    units = []
    if isinstance(model, RevNet):
        for stage, (opener, stack) in enumerate(zip(model.openers, model.stacks, strict=True), start=1):
            fn, values = opener.fn, _module_values(opener)
            name = f"stage{stage}/unit1"
            units.append(RevNetUnit(folder.residual(fn.f, _prefixed(values, "f"), f"{name}/f"),
                                    folder.residual(fn.g, _prefixed(values, "g"), f"{name}/g"),
                                    folder.shortcut(fn.shortcut1, values, name),
                                    folder.shortcut(fn.shortcut2, values, name)))
            if stack is not None:
                units += fold_stack(folder, stack, f"stage{stage}/reversible")
    elif isinstance(model, ResNet):
        for layer in model.units:
            values, name = _module_values(layer), layer.name
            units.append(ResNetUnit(folder.residual(layer.fn.residual, _prefixed(values, "f"), f"{name}/f"),
                                    folder.shortcut(layer.fn.shortcut, values, name)))
    else:
        raise UserError(f"the inference graph cannot fold a {type(model).__name__}; it knows ResNet and RevNet")
    head_values = _module_values(model.head)
    program = Program(
        pixel_mean=folder.add("pixel_mean", mean), stem=stem, stem_max_pool=stem_fn.max_pool,
        units=tuple(units), split_channels=isinstance(model, RevNet),
        head_affine=folder.add("head/bn/scale_shift",
                               np.stack(folder.bn_scale_shift(head_values, "bn", model.head.fn.epsilon))),
        dense_kernel=folder.add("head/dense/kernel", head_values("dense/kernel")),
        dense_bias=folder.add("head/dense/bias", head_values("dense/bias")))
    return program, folder.arrays


class InferenceGraph(tf.Module):
    """The folded program and its weights (non-trainable variables, so a SavedModel keeps `variables/`)."""

    def __init__(self, model):
        super().__init__(name="inference_graph")
        program, arrays = fold_model(model)
        self.program = program
        self.weights = {name: tf.Variable(array, trainable=False, name=name.replace("/", "_"))
                        for name, array in arrays.items()}
        self.input_size = model.config.input_size

    def logits(self, images, layout: str = "NHWC"):
        weights = {name: tf.convert_to_tensor(value) for name, value in self.weights.items()}
        return self.program.apply(Ops(weights, layout), tf.cast(images, tf.float32))


def outputs_from_logits(logits) -> Dict[str, tf.Tensor]:
    """The serving outputs: probabilities, classes (int64) and logits."""
    return {"probabilities": tf.nn.softmax(logits, axis=-1),
            "classes": tf.argmax(logits, axis=-1, output_type=tf.int64), "logits": logits}
