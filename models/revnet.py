"""RevNet: each stage is an ordinary opening unit (it may change shape) followed by a reversible stack.

Activations travel as the pair (x1, x2) of channel halves from the stem to the head.
"""
from __future__ import annotations

import tensorflow as tf

from revnet.models.layers import BatchStats, ResidualFn, Shortcut, prefixed, residual_fn, sub_params, sub_stats
from revnet.models.network import Network
from revnet.models.reversible import ReversibleStack


class RevNetUnitFn(ResidualFn):
    """The opening unit of a stage: y1 = F(x2) + s1(x1); y2 = G(y1) + s2(x2), stored as usual."""

    def __init__(self, block: str, in_channels: int, out_channels: int, stride: int, preactivate: bool):
        half_in, half_out = in_channels // 2, out_channels // 2
        self.f = residual_fn(block, half_in, half_out, stride, preactivate)
        self.g = residual_fn(block, half_out, half_out, 1)
        self.shortcut1 = Shortcut(block, half_in, half_out, stride, name="shortcut1")
        self.shortcut2 = Shortcut(block, half_in, half_out, stride, name="shortcut2")

    def params(self):
        return (prefixed("f", self.f.params()) + prefixed("g", self.g.params())
                + self.shortcut1.params() + self.shortcut2.params())

    def __call__(self, p, x, training, stats: BatchStats):
        x1, x2 = x
        f_stats: BatchStats = {}
        g_stats: BatchStats = {}
        y1 = self.f(sub_params(p, "f"), x2, training, f_stats) + self.shortcut1(p, x1)
        y2 = self.g(sub_params(p, "g"), y1, training, g_stats) + self.shortcut2(p, x2)
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
                zip(config.units_per_stage, widths, config.strides)):
            fn = RevNetUnitFn(config.block, in_channels, out_channels, stride, preactivate=stage != 0)
            self.openers.append(self._layer(fn, f"stage{stage + 1}/unit1"))
            half = out_channels // 2
            self.stacks.append(ReversibleStack(
                residual_fn(config.block, half, half), residual_fn(config.block, half, half),
                num_units - 1, f"stage{stage + 1}/reversible", self.param_dtype, self.seeds,
                config.bn_momentum, config.mode) if num_units > 1 else None)
            in_channels = out_channels
        self._build_head(in_channels)

    def body(self, x, training):
        x1, x2 = tf.split(x, 2, axis=-1)
        for opener, stack in zip(self.openers, self.stacks):
            x1, x2 = opener((x1, x2), training)
            if stack is not None:
                x1, x2 = stack(x1, x2, training)
        return tf.concat([x1, x2], axis=-1)
