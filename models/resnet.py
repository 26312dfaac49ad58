"""Pre-activation ResNet (the paper's baseline), built from the shared residual pieces.

Modes "autodiff" and "reversible" (a ResNet has no reversible blocks) store every activation;
"recompute" keeps only each unit's input and re-runs the unit in the backward pass.
"""
from __future__ import annotations

from revnet.models.layers import BatchStats, ResidualFn, Shortcut, prefixed, residual_fn, sub_params, sub_stats
from revnet.models.network import Network


class ResNetUnitFn(ResidualFn):
    """y = F(x) + shortcut(x)."""

    def __init__(self, block: str, in_channels: int, out_channels: int, stride: int, preactivate: bool):
        self.residual = residual_fn(block, in_channels, out_channels, stride, preactivate)
        self.shortcut = Shortcut(block, in_channels, out_channels, stride)

    def params(self):
        return prefixed("f", self.residual.params()) + self.shortcut.params()

    def __call__(self, p, x, training, stats: BatchStats):
        inner: BatchStats = {}
        y = self.residual(sub_params(p, "f"), x, training, inner)
        sub_stats(stats, "f", inner)
        return y + self.shortcut(p, x)


class ResNet(Network):
    def __init__(self, config):
        super().__init__(config, config.name)
        widths = config.stage_output_channels
        in_channels = config.stem_channels
        self.units = []
        for stage, (num_units, out_channels, stride) in enumerate(
                zip(config.units_per_stage, widths, config.strides, strict=True)):
            for unit in range(num_units):
                # The stem already ends in BN-ReLU, so the very first unit starts with its conv.
                fn = ResNetUnitFn(config.block, in_channels, out_channels, stride if unit == 0 else 1,
                                  preactivate=not (stage == 0 and unit == 0))
                self.units.append(self._layer(fn, f"stage{stage + 1}/unit{unit + 1}"))
                in_channels = out_channels
        self._build_head(in_channels)

    def body(self, x, training):
        # "recompute": each unit under tf.recompute_grad, the usual way to trade compute for memory.
        recompute = self.config.mode == "recompute"
        x = self._after("stem", self.stem(x, self._training("stem", training)))
        for unit in self.units:
            unit_training = self._training(unit.part, training)
            x = self._after(unit.part, unit(x, unit_training, recompute=recompute and unit_training))
        return x
