"""ReversibleSequence, experimental (additive coupling only, so far): y1 = x1 + f(x2), y2 = x2 + g(y1).

mode="reversible" keeps only the output: the custom gradient rebuilds each block's input from its
output and re-runs f and g under a tape. mode="autodiff" is plain autodiff, the reference.
Not yet: affine/user couplings, "recompute", dropout replay, batch-norm statistics, serialization. Blocks
holding randomness or state that the backward recomputation would change (Dropout, BatchNormalization,
any non-trainable weight) are refused in reversible mode rather than given wrong gradients.
"""
from __future__ import annotations

import tensorflow as tf
import keras


def _tf_variables(layer):
    """The tf.Variables behind a Keras layer's trainable weights: custom_gradient hands those, not KerasVariables."""
    return [getattr(v, "value", v) for v in layer.trainable_variables]


def _taped(fn, x, dy, var_grads):
    """fn(x) re-run under a tape: (output, gradient of x), its weights' gradients added into `var_grads`."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = fn(x)
    fn_vars = _tf_variables(fn)
    grads = tape.gradient(out, [x] + fn_vars, output_gradients=dy, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    for v, d in zip(fn_vars, grads[1:]):
        var_grads[id(v)] = var_grads.get(id(v), 0) + d
    return out, grads[0]


_STATEFUL = (keras.layers.Dropout, keras.layers.BatchNormalization, keras.layers.GaussianNoise,
             keras.layers.GaussianDropout, keras.layers.AlphaDropout)


def _refuse_state(fn) -> None:
    layers = fn._flatten_layers(include_self=True, recursive=True) if isinstance(fn, keras.layers.Layer) else []
    for layer in layers:
        if isinstance(layer, _STATEFUL) or layer.non_trainable_weights:
            raise ValueError(f"{type(layer).__name__} inside a reversible block is not supported yet (its "
                             f"recomputation in the backward pass would use another mask or move its statistics "
                             f"again); use mode='autodiff' for this block")


class ReversibleSequence(keras.layers.Layer):
    """Reversible blocks `[(f, g), ...]` over the two halves of the input along `split_axis`."""

    def __init__(self, blocks, mode: str = "reversible", split_axis: int = -1, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("reversible", "autodiff"):
            raise ValueError(f"unknown mode {mode!r}; expected 'reversible' or 'autodiff'")
        self.blocks = [tuple(pair) for pair in blocks]
        if mode == "reversible":
            for pair in self.blocks:
                for fn in pair:
                    _refuse_state(fn)
        self.mode = mode
        self.split_axis = split_axis

    def _split(self, x):
        if x.shape[self.split_axis] is not None and x.shape[self.split_axis] % 2:
            raise ValueError(f"split axis has odd size {x.shape[self.split_axis]}; expected an even size")
        return tf.split(x, 2, axis=self.split_axis)

    def _forward(self, x1, x2):
        for f, g in self.blocks:
            x1 = x1 + f(x2)
            x2 = x2 + g(x1)
        return x1, x2

    def inverse(self, y):
        y1, y2 = self._split(y)
        for f, g in reversed(self.blocks):
            y2 = y2 - g(y1)
            y1 = y1 - f(y2)
        return tf.concat([y1, y2], axis=self.split_axis)

    def call(self, x):
        x1, x2 = self._split(x)
        if self.mode == "autodiff":
            return tf.concat(self._forward(x1, x2), axis=self.split_axis)
        return self._reversible(x1, x2)

    def _reversible(self, x1, x2):
        @tf.custom_gradient
        def run(x1, x2):
            y1, y2 = self._forward(x1, x2)

            def grad(dy1, dy2, variables=None):
                y1_, y2_ = y1, y2
                var_grads = {id(v): tf.zeros_like(v) for v in variables or []}
                for f, g in reversed(self.blocks):
                    g_out, dg_in = _taped(g, y1_, dy2, var_grads)
                    x2 = y2_ - g_out
                    dz1 = dy1 + dg_in
                    f_out, df_in = _taped(f, x2, dz1, var_grads)
                    y1_, y2_ = y1_ - f_out, x2
                    dy1, dy2 = dz1, dy2 + df_in
                return (dy1, dy2), [var_grads[id(v)] for v in variables or []]

            return (y1, y2), grad

        y1, y2 = run(x1, x2)
        return tf.concat([y1, y2], axis=self.split_axis)
