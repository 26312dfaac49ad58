"""RevNet: each stage is an ordinary opening unit (it may change shape) followed by a reversible stack.

Activations travel as the pair (x1, x2) of channel halves from the stem to the head, always in the
parameter dtype (float32), while F and G compute in the compute dtype (mixed precision). In
"reversible" mode the opening units (the first one together with the stem) and the head are
recomputed in the backward pass from their stored inputs, so a training step keeps only the input
images and each later stage's boundary activations.
"""
from __future__ import annotations

from typing import List

import numpy as np
import tensorflow as tf

from revnet.models.layers import (BatchStats, ResidualFn, Shortcut, in_compute_dtype, prefixed, residual_fn,
                                  sub_params, sub_stats)
from revnet.models.network import Network, call_layers
from revnet.models.reversible import ReversibleStack


class RevNetUnitFn(ResidualFn):
    """The opening unit of a stage: y1 = F(x2) + s1(x1); y2 = G(y1) + s2(x2)."""

    def __init__(self, block: str, in_channels: int, out_channels: int, stride: int, preactivate: bool,
                 compute_dtype: tf.DType):
        half_in, half_out = in_channels // 2, out_channels // 2
        self.f = residual_fn(block, half_in, half_out, stride, preactivate)
        self.g = residual_fn(block, half_out, half_out, 1)
        self.shortcut1 = Shortcut(block, half_in, half_out, stride, name="shortcut1")
        self.shortcut2 = Shortcut(block, half_in, half_out, stride, name="shortcut2")
        self.compute_dtype = compute_dtype

    def params(self):
        return (prefixed("f", self.f.params()) + prefixed("g", self.g.params())
                + self.shortcut1.params() + self.shortcut2.params())

    def __call__(self, p, x, training, stats: BatchStats):
        x1, x2 = x
        f_stats: BatchStats = {}
        g_stats: BatchStats = {}
        y1 = in_compute_dtype(self.f, sub_params(p, "f"), x2, training, f_stats, self.compute_dtype) \
            + self.shortcut1(p, x1)
        y2 = in_compute_dtype(self.g, sub_params(p, "g"), y1, training, g_stats, self.compute_dtype) \
            + self.shortcut2(p, x2)
        sub_stats(stats, "f", f_stats)
        sub_stats(stats, "g", g_stats)
        return y1, y2


class RevNet(Network):
    def __init__(self, config):
        super().__init__(config, config.name)
        widths = config.stage_output_channels
        in_channels = config.stem_channels
        self.openers, self.stacks = [], []
        for stage, (num_units, out_channels, stride) in enumerate(
                zip(config.units_per_stage, widths, config.strides, strict=True)):
            fn = RevNetUnitFn(config.block, in_channels, out_channels, stride, preactivate=stage != 0,
                              compute_dtype=self.compute_dtype)
            self.openers.append(self._layer(fn, f"stage{stage + 1}/unit1"))
            half = out_channels // 2
            self.stacks.append(ReversibleStack(
                f=residual_fn(config.block, half, half), g=residual_fn(config.block, half, half),
                num_blocks=num_units - 1, name=f"stage{stage + 1}/reversible", dtype=self.param_dtype,
                seeds=self.seeds, bn_momentum=config.bn_momentum, mode=config.mode,
                compute_dtype=self.compute_dtype) if num_units > 1 else None)
            in_channels = out_channels
        self._build_head(in_channels)

    @property
    def recompute_head(self) -> bool:
        # In reversible mode nothing but the stage boundaries should stay alive for the backward pass.
        return self.config.mode == "reversible"

    def _split(self, x):
        return tuple(tf.split(tf.cast(x, self.param_dtype), 2, axis=-1))

    def body(self, x, training):
        # Reversible mode recomputes the stem together with the first opening unit from the input
        # images, so not even the stem's output is kept; the later openers keep their stage's input.
        # With --freeze, each part trains or runs in inference mode on its own (models/parts.py).
        reversible = self.config.mode == "reversible"
        recompute = self.config.mode in ("reversible", "recompute")
        stem_training = self._training("stem", training)
        joined = reversible and stem_training == self._training("stage1", training)
        x1, x2 = call_layers([self.stem, self._split, self.openers[0]] if joined else [self.stem, self._split],
                             x, stem_training, recompute=reversible and stem_training)
        if not joined:
            x1, x2 = self._after("stem", (x1, x2))
        for stage, (opener, stack) in enumerate(zip(self.openers, self.stacks, strict=True)):
            part = f"stage{stage + 1}"
            part_training = self._training(part, training)
            if stage > 0 or not joined:
                x1, x2 = opener((x1, x2), part_training, recompute=recompute and part_training)
            if stack is not None:
                x1, x2 = stack(x1, x2, part_training)
            x1, x2 = self._after(part, (x1, x2))
        return tf.concat([x1, x2], axis=-1)

    def reconstruction_errors(self, images) -> List[float]:
        """Per reversible stack, ||x_rec - x|| / ||x|| of its input rebuilt by the backward pass's inverse
        after one training-mode forward pass (which also moves the batch-norm averages, as a step would)."""
        x1, x2 = self._split(self.stem(tf.cast(self.normalize(images), self.compute_dtype), True))
        errors = []
        for opener, stack in zip(self.openers, self.stacks, strict=True):
            x1, x2 = opener((x1, x2), True)
            if stack is None:
                continue
            y1, y2 = stack(x1, x2, True)
            r1, r2 = stack.reconstruct(y1, y2)
            truth = np.concatenate([x1.numpy(), x2.numpy()], axis=-1).astype(np.float64)
            rebuilt = np.concatenate([r1.numpy(), r2.numpy()], axis=-1).astype(np.float64)
            errors.append(float(np.linalg.norm(rebuilt - truth) / max(np.linalg.norm(truth), 1e-300)))
            x1, x2 = y1, y2
        return errors
