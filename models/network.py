"""What every network shares: a module holding one residual piece's variables, `call_layers` (a chain
of pieces, optionally recomputed in the backward pass from its input), the stem, the head, and the
`Network` base class (input normalisation, variable lists, the call)."""
from __future__ import annotations

from typing import Dict, List

import tensorflow as tf

from revnet.models.layers import (DECAY_KINDS, BatchStats, Param, ResidualFn, SeedSequence, batch_norm, bn_params,
                           conv2d, conv_param, create_variables)
from revnet.models.normalization import normalization_constants, normalize
from revnet.models.parts import frozen_sets

def update_moving_stats(variables: Dict[str, tf.Variable], stats: BatchStats, momentum: float) -> None:
    """moving = momentum * moving + (1 - momentum) * batch, once per real forward pass."""
    for bn_name, (mean, variance) in stats.items():
        for suffix, value in (("moving_mean", mean), ("moving_var", variance)):
            variable = variables[f"{bn_name}/{suffix}"]
            variable.assign_sub((1.0 - momentum) * (variable - tf.cast(value, variable.dtype)))


class Layer(tf.Module):
    """The variables of one residual piece (stem, unit, head) and its call."""

    def __init__(self, fn: ResidualFn, name: str, dtype: tf.DType, seeds: SeedSequence, bn_momentum: float):
        super().__init__(name=name.replace("/", "_"))
        self.fn = fn
        self.part = name.split("/")[0]   # stem, stageN or head (see models/parts.py)
        self.bn_momentum = bn_momentum
        self.param_specs: List[Param] = fn.params()
        with self.name_scope:
            self.params = create_variables(self.param_specs, name, dtype, seeds)

    def __call__(self, x, training: bool, recompute: bool = False):
        """y = fn(x). `recompute` (training only): keep just x for the backward pass, which re-runs fn."""
        return call_layers([self], x, training, recompute)


def call_layers(steps: List, x, training: bool, recompute: bool = False):
    """Apply `steps` (Layers, or weightless functions of the activations) in turn. `recompute` (training
    only): the whole chain keeps just its input x for the backward pass, which re-runs it."""
    layers = [step for step in steps if isinstance(step, Layer)]
    names = [[spec.name for spec in layer.param_specs if spec.trainable or not training] for layer in layers]
    values = [tf.convert_to_tensor(layer.params[name]) for layer, layer_names in zip(layers, names, strict=True)
              for name in layer_names]
    flat_x = tf.nest.flatten(x)

    # Weights enter as arguments (read outside), so recompute_grad returns their gradients as input
    # gradients; the batch statistics leave as outputs and the moving averages are updated below,
    # once per real forward pass, never by the recomputation.
    def forward(*tensors):
        y = tf.nest.pack_sequence_as(x, tensors[:len(flat_x)])
        weights = iter(tensors[len(flat_x):])
        all_stats: List[BatchStats] = []
        for step in steps:
            if not isinstance(step, Layer):
                y = step(y)
                continue
            stats: BatchStats = {}
            layer_names = names[len(all_stats)]
            y = step.fn({name: next(weights) for name in layer_names}, y, training, stats)
            all_stats.append(stats)
        return y, all_stats

    if not training:
        return forward(*flat_x, *values)[0]
    y, all_stats = (tf.recompute_grad(forward) if recompute else forward)(*flat_x, *values)
    for layer, stats in zip(layers, all_stats, strict=True):
        update_moving_stats(layer.params, stats, layer.bn_momentum)
    return y


class StemFn(ResidualFn):
    """conv(k, stride) -> BN -> ReLU [-> max-pool 3x3/2]: 3x3/1 for CIFAR, 7x7/2 + pool for ImageNet."""

    def __init__(self, channels: int, kernel_size: int, stride: int, max_pool: bool):
        self.channels, self.kernel_size, self.stride, self.max_pool = channels, kernel_size, stride, max_pool

    def params(self):
        return [conv_param("conv", self.kernel_size, 3, self.channels)] + bn_params("bn", self.channels)

    def __call__(self, p, x, training, stats):
        x = conv2d(x, p["conv/kernel"], self.stride)
        x = tf.nn.relu(batch_norm(p, "bn", x, training, self.epsilon, stats))
        if self.max_pool:
            x = tf.nn.max_pool2d(x, 3, 2, "SAME")
        return x


class HeadFn(ResidualFn):
    """Final BN -> ReLU -> global average pool -> dense logits (float32)."""

    def __init__(self, channels: int, num_classes: int):
        self.channels, self.num_classes = channels, num_classes

    def params(self):
        return bn_params("bn", self.channels) + [
            Param("dense/kernel", (self.channels, self.num_classes), "dense"),
            Param("dense/bias", (self.num_classes,), "bias")]

    def __call__(self, p, x, training, stats):
        x = tf.nn.relu(batch_norm(p, "bn", x, training, self.epsilon, stats))
        x = tf.cast(tf.reduce_mean(x, axis=[1, 2]), p["dense/kernel"].dtype)
        return tf.matmul(x, p["dense/kernel"]) + p["dense/bias"]


class Network(tf.Module):
    """Base of ResNet and RevNet: `model(images, training)` maps raw 0..255 RGB to float32 logits."""

    def __init__(self, config, name: str):
        super().__init__(name=name.replace("-", "_"))
        self.config = config
        self.param_dtype = tf.as_dtype(config.param_dtype)
        self.compute_dtype = tf.as_dtype(config.compute_dtype or config.param_dtype)
        self.seeds = SeedSequence(config.seed)
        # Normalisation constants live here (not in the data pipeline), so exports take raw pixels.
        self.pixel_mean, self.pixel_std = normalization_constants(config, self.param_dtype)
        stem_stride, stem_kernel, stem_pool = (2, 7, True) if config.stem == "imagenet" else (1, 3, False)
        self.stem = self._layer(StemFn(config.stem_channels, stem_kernel, stem_stride, stem_pool), "stem")
        self.frozen = frozenset()
        self._frozen_prefix = frozenset()

    def freeze(self, parts) -> None:
        """Freeze these parts (models/parts.py): they run in inference mode (moving batch-norm statistics,
        never updated) and `trained_variables` leaves their weights out. What only frozen parts feed is cut
        from the backward pass, so a frozen prefix stores nothing for it."""
        self.frozen, self._frozen_prefix = frozen_sets(self.config, parts)

    def unroll_loops(self) -> None:
        """Unroll the reversible stacks' loops (for XLA: train --jit). Same results; under XLA the activation
        memory then grows with depth (docs/benchmarks.md), without XLA it stays what the loops store."""
        for module in self._flatten_modules():
            if hasattr(module, "unrolled"):
                module.unrolled = True

    def _training(self, part: str, training: bool) -> bool:
        return training and part not in self.frozen

    def _after(self, part: str, x):
        """`x`, cut from the gradient when `part` and everything before it are frozen."""
        if part in self._frozen_prefix:
            return tf.nest.map_structure(tf.stop_gradient, x)
        return x

    @property
    def recompute_head(self) -> bool:
        """Whether the head keeps only its input for the backward pass (see RevNet)."""
        return False

    def _layer(self, fn: ResidualFn, name: str) -> Layer:
        return Layer(fn, name, self.param_dtype, self.seeds, self.config.bn_momentum)

    def _build_head(self, channels: int) -> None:
        self.head = self._layer(HeadFn(channels, self.config.num_classes), "head")

    def body(self, x, training: bool):
        """Stem and stages: normalised input (compute dtype) -> features for the head."""
        raise NotImplementedError

    def normalize(self, images):
        """Raw 0..255 RGB to the network's input scale (the config's input_normalization), in the parameter dtype."""
        return normalize(images, self.config.input_normalization, self.pixel_mean, self.pixel_std, self.param_dtype)

    def __call__(self, images, training: bool = False):
        x = self.body(tf.cast(self.normalize(images), self.compute_dtype), training)  # the stem included
        head_training = self._training("head", training)
        return tf.cast(self.head(x, head_training, recompute=self.recompute_head and head_training), tf.float32)

    @property
    def trained_variables(self) -> List[tf.Variable]:
        """The trainable variables outside the frozen parts: what the optimizer updates."""
        frozen = {id(variable) for module in self._flatten_modules() if module.part in self.frozen
                  for variable in module.params.values()}
        return [variable for variable in self.trainable_variables if id(variable) not in frozen]

    @property
    def classifier_variables(self) -> List[tf.Variable]:
        """The weights whose shape follows the class count (re-initialised when fine-tuning onto new classes)."""
        return [self.head.params["dense/kernel"], self.head.params["dense/bias"]]

    @property
    def decay_variables(self) -> List[tf.Variable]:
        """Variables that get L2 weight decay in training: conv and dense kernels, as in the original."""
        return [variable for variable, kind in self._variables_with_kinds() if kind in DECAY_KINDS]

    def _variables_with_kinds(self):
        for module in self._flatten_modules():
            for name, variable in getattr(module, "params", {}).items():
                spec = next(s for s in module.param_specs if s.name == name)
                yield variable, spec.kind

    def _flatten_modules(self):
        return [module for module in self.submodules if hasattr(module, "param_specs")]

    def count_params(self) -> int:
        """Trainable parameter count (BN scale and offset included, moving statistics not), from the
        parameter shapes, so it also works on a structure built under `layers.shapes_only()`."""
        return int(sum(module.params[spec.name].shape.num_elements()
                       for module in self._flatten_modules() for spec in module.param_specs if spec.trainable))
