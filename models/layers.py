"""Parameter specs, variable creation and the functional residual pieces shared by every model.

Every residual function is written as a pure function of a parameter dict so that the same
code runs on ordinary per-block variables and on one slice of a stage's stacked variables
(see `models/reversible.py`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Dict, List, Mapping, Tuple

import tensorflow as tf

TRAINABLE_KINDS = ("conv", "dense", "bias", "gamma", "beta")
DECAY_KINDS = ("conv", "dense")
MOVING_KINDS = ("moving_mean", "moving_var")

# Batch statistics recorded by a training-mode call: {bn_name: (batch_mean, batch_var)}.
BatchStats = Dict[str, Tuple[tf.Tensor, tf.Tensor]]


@dataclasses.dataclass(frozen=True)
class Param:
    """One parameter of a residual function: its name, shape and kind (which sets init and decay)."""

    name: str
    shape: Tuple[int, ...]
    kind: str

    @property
    def trainable(self) -> bool:
        return self.kind in TRAINABLE_KINDS


class SeedSequence:
    """Deterministic per-variable seeds, so that `build_model(name, seed=s)` always gives the same weights."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.counter = 0

    def next(self) -> tf.Tensor:
        self.counter += 1
        return tf.constant([self.seed, self.counter], dtype=tf.int64)


def initial_value(param: Param, dtype: tf.DType, seeds: SeedSequence, num_stacked: int | None = None):
    """Initial value following the original code: He-normal convs, uniform-scaling dense, BN at identity."""
    shape = tuple(param.shape) if num_stacked is None else (num_stacked,) + tuple(param.shape)
    if param.kind == "conv":
        kernel_h, kernel_w, _, out_channels = param.shape
        stddev = math.sqrt(2.0 / (kernel_h * kernel_w * out_channels))
        return tf.random.stateless_truncated_normal(shape, seeds.next(), stddev=stddev, dtype=dtype)
    if param.kind == "dense":
        limit = math.sqrt(3.0 / param.shape[0])
        return tf.random.stateless_uniform(shape, seeds.next(), -limit, limit, dtype=dtype)
    if param.kind in ("gamma", "moving_var"):
        return tf.ones(shape, dtype)
    return tf.zeros(shape, dtype)


_SHAPES_ONLY = []


@contextlib.contextmanager
def shapes_only():
    """Build a model's structure without allocating or initialising weights (for counting parameters)."""
    _SHAPES_ONLY.append(True)
    try:
        yield
    finally:
        _SHAPES_ONLY.pop()


def create_variables(params: List[Param], prefix: str, dtype: tf.DType, seeds: SeedSequence,
                     num_stacked: int | None = None) -> Dict[str, tf.Variable]:
    """Create one variable per Param (shape `[num_stacked, ...]` when stacked).

    Moving statistics are replica-synchronised on read with MEAN aggregation: each replica
    updates its own copy in the forward pass, and reading them outside a replica (eval,
    checkpoint, export) averages. A plain variable would silently keep replica 0's values.
    """
    variables = {}
    if _SHAPES_ONLY:
        return {param.name: tf.TensorSpec(((num_stacked,) if num_stacked else ()) + tuple(param.shape), dtype)
                for param in params}
    for param in params:
        value = initial_value(param, dtype, seeds, num_stacked)
        name = f"{prefix}/{param.name}".replace("/", "_")
        if param.kind in MOVING_KINDS:
            variables[param.name] = tf.Variable(
                value, trainable=False, name=name,
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.MEAN)
        else:
            variables[param.name] = tf.Variable(value, trainable=True, name=name)
    return variables


def bn_params(name: str, channels: int) -> List[Param]:
    return [Param(f"{name}/gamma", (channels,), "gamma"), Param(f"{name}/beta", (channels,), "beta"),
            Param(f"{name}/moving_mean", (channels,), "moving_mean"),
            Param(f"{name}/moving_var", (channels,), "moving_var")]


def conv_param(name: str, size: int, in_channels: int, out_channels: int) -> Param:
    return Param(f"{name}/kernel", (size, size, in_channels, out_channels), "conv")


def conv2d(x, kernel, stride: int):
    return tf.nn.conv2d(x, tf.cast(kernel, x.dtype), strides=stride, padding="SAME")


def batch_norm(p: Mapping[str, tf.Tensor], name: str, x, training: bool, epsilon: float, stats: BatchStats):
    """Batch norm with float32 (or float64) statistics; training mode records the biased batch moments in `stats`.

    - float32: TF's fused kernel. On this CPU build (oneDNN) a ResNet-32 training step at batch 32 takes
      0.089 s with it against 0.127 s with the same maths in separate ops. Its float32 gradients are as far
      from a float64 reference as the separate ops' (ResNet-32 at initialisation, batches of 16 and 32: median
      tensor 1.8e-3 relative, against 1.1e-3 to 1.4e-3; at batch 4, 2e-6 for both): the net's conditioning,
      not the kernel, sets that error.
    - float64 (the reference the parity tests use): separate ops; the fused kernel has no float64.
    - a 16-bit input (mixed precision) trains through `batch_norm_recomputed`, which keeps only that input
      for the backward pass instead of float32 copies of it.
    """
    gamma, beta = p[f"{name}/gamma"], p[f"{name}/beta"]
    if training and x.dtype in (tf.bfloat16, tf.float16):
        y, mean, variance = batch_norm_recomputed(x, gamma, beta, epsilon)
        stats[name] = (mean, variance)
        return y
    if x.dtype == tf.float32 and gamma.dtype == tf.float32:
        return _fused_batch_norm(p, name, x, training, epsilon, stats)
    x32 = tf.cast(x, gamma.dtype)
    if training:
        mean, variance = tf.nn.moments(x32, axes=[0, 1, 2])
        stats[name] = (mean, variance)
    else:
        mean, variance = p[f"{name}/moving_mean"], p[f"{name}/moving_var"]
    y = tf.nn.batch_normalization(x32, mean, variance, beta, gamma, epsilon)
    return tf.cast(y, x.dtype)


def _fused_batch_norm(p, name, x, training: bool, epsilon: float, stats: BatchStats):
    gamma, beta = p[f"{name}/gamma"], p[f"{name}/beta"]
    if not training:
        return tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, p[f"{name}/moving_mean"], p[f"{name}/moving_var"],
                                                 epsilon=epsilon, is_training=False)[0]
    y, mean, unbiased = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=epsilon, is_training=True)[:3]
    count = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), unbiased.dtype)
    # The kernel returns Bessel's corrected variance; the moving averages take the biased one, as tf.nn.moments.
    stats[name] = (mean, unbiased * (count - 1.0) / count)
    return y


def batch_norm_recomputed(x, gamma, beta, epsilon: float):
    """Training-mode batch norm over [N, H, W, C] computed in gamma's dtype, returned in x's: (y, mean, variance).

    Its backward pass keeps only x (in its own, possibly 16-bit, dtype) and per-channel vectors, and rebuilds
    the normalised input from them; autodiff of the same ops would keep several copies of x in gamma's dtype.
    The moments leave for the moving averages only: no gradient flows back through them.
    """
    @tf.custom_gradient
    def run(x, gamma, beta):
        wide = gamma.dtype
        x_wide = tf.cast(x, wide)
        mean, variance = tf.nn.moments(x_wide, axes=[0, 1, 2])
        inv = tf.math.rsqrt(variance + tf.cast(epsilon, wide))
        y = tf.cast((x_wide - mean) * (inv * gamma) + beta, x.dtype)

        def grad(dy, *_moment_grads):
            x_hat = (tf.cast(x, wide) - mean) * inv
            dy_wide = tf.cast(dy, wide)
            count = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), wide)
            sum_dy = tf.reduce_sum(dy_wide, axis=[0, 1, 2])
            sum_dy_x_hat = tf.reduce_sum(dy_wide * x_hat, axis=[0, 1, 2])
            dx = (gamma * inv / count) * (count * dy_wide - sum_dy - x_hat * sum_dy_x_hat)
            return tf.cast(dx, x.dtype), sum_dy_x_hat, sum_dy

        return (y, tf.stop_gradient(mean), tf.stop_gradient(variance)), grad

    return run(x, gamma, beta)


def in_compute_dtype(fn, p, x, training: bool, stats: BatchStats, compute_dtype: tf.DType):
    """fn(x) computed in `compute_dtype` (mixed precision), returned in x's dtype (the residual stream's)."""
    return tf.cast(fn(p, tf.cast(x, compute_dtype), training, stats), x.dtype)


class ResidualFn:
    """A residual function F(x) (pre-activation, as the original code's v2 units).

    `params()` lists its parameters; `__call__(p, x, training, stats)` applies it with a dict
    of parameter tensors and records batch-norm moments in `stats` when training.
    """

    epsilon = 1e-3

    def params(self) -> List[Param]:
        raise NotImplementedError

    def __call__(self, p, x, training: bool, stats: BatchStats):
        raise NotImplementedError

    def _bn_relu(self, p, name, x, training, stats):
        return tf.nn.relu(batch_norm(p, name, x, training, self.epsilon, stats))


class ConvChainFn(ResidualFn):
    """A chain of convolutions, each but the first after BN-ReLU (the first too when preactivated):
    [bn1-ReLU] conv1(stride) -> bn2-ReLU -> conv2 -> ... Subclasses give the chain as `layers`:
    (kernel size, in channels, out channels) per conv; only the first conv is strided."""

    layers: List[Tuple[int, int, int]]  # set by each subclass

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, preactivate: bool = True):
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.preactivate = stride, preactivate

    def params(self):
        params = []
        for index, (size, cin, cout) in enumerate(self.layers, start=1):
            if index > 1 or self.preactivate:
                params += bn_params(f"bn{index}", cin)
            params.append(conv_param(f"conv{index}", size, cin, cout))
        return params

    def __call__(self, p, x, training, stats):
        for index in range(1, len(self.layers) + 1):
            if index > 1 or self.preactivate:
                x = self._bn_relu(p, f"bn{index}", x, training, stats)
            x = conv2d(x, p[f"conv{index}/kernel"], self.stride if index == 1 else 1)
        return x


class BasicFn(ConvChainFn):
    """[BN-ReLU] conv3x3(stride) -> BN-ReLU -> conv3x3."""

    @property
    def layers(self):
        return [(3, self.in_channels, self.out_channels), (3, self.out_channels, self.out_channels)]


class BottleneckFn(ConvChainFn):
    """[BN-ReLU] conv1x1(stride) -> BN-ReLU -> conv3x3 -> BN-ReLU -> conv1x1, inner width out/4."""

    @property
    def inner_channels(self) -> int:
        return self.out_channels // 4

    @property
    def layers(self):
        inner = self.inner_channels
        return [(1, self.in_channels, inner), (3, inner, inner), (1, inner, self.out_channels)]


def residual_fn(block: str, in_channels: int, out_channels: int, stride: int = 1,
                preactivate: bool = True) -> ResidualFn:
    cls = BasicFn if block == "basic" else BottleneckFn
    return cls(in_channels, out_channels, stride, preactivate)


class Shortcut:
    """The identity path of a unit when shapes change, as in the original code.

    Basic units: average-pool by the stride and zero-pad the new channels (no parameters).
    Bottleneck units: a 1x1 projection conv with the stride (no BN).
    """

    def __init__(self, block: str, in_channels: int, out_channels: int, stride: int, name: str = "shortcut"):
        self.block, self.name = block, name
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.projects = block == "bottleneck" and (stride > 1 or in_channels != out_channels)

    def params(self):
        return [conv_param(self.name, 1, self.in_channels, self.out_channels)] if self.projects else []

    def __call__(self, p, x):
        if self.projects:
            return conv2d(x, p[f"{self.name}/kernel"], self.stride)
        if self.stride > 1:
            x = tf.nn.avg_pool2d(x, self.stride, self.stride, "VALID")
        if self.out_channels > self.in_channels:
            pad = (self.out_channels - self.in_channels) // 2
            x = tf.pad(x, [[0, 0], [0, 0], [0, 0], [pad, self.out_channels - self.in_channels - pad]])
        return x


def prefixed(prefix: str, params: List[Param]) -> List[Param]:
    return [dataclasses.replace(param, name=f"{prefix}/{param.name}") for param in params]


def sub_params(p: Mapping[str, tf.Tensor], prefix: str) -> Dict[str, tf.Tensor]:
    """The entries of `p` under `prefix/`, with the prefix removed."""
    start = len(prefix) + 1
    return {name[start:]: value for name, value in p.items() if name.startswith(prefix + "/")}


def sub_stats(stats: BatchStats, prefix: str, inner: BatchStats) -> None:
    for name, value in inner.items():
        stats[f"{prefix}/{name}"] = value
