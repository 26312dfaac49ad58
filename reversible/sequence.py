"""ReversibleSequence, experimental: blocks (f, g) over the halves x1, x2 of the input along `split_axis`,

    y1 = coupling.forward(x1, f(x2)),  y2 = coupling.forward(x2, g(y1)),

with an additive, an affine or a user's own coupling (revnet.reversible.coupling), and `inverse(y)` for each.

Modes: "reversible" keeps only the output: a custom gradient rebuilds each block's input from its output and
re-runs f and g under a tape. "recompute" keeps each block's input and re-runs the block (tf.recompute_grad).
"autodiff" is plain autodiff, the reference.

In both re-running modes the re-run replays each f and g call: the non-trainable variables of the layer
(the states of its seed generators, moving statistics) are set to what they were before the forward call, then
back to what they were before the re-run. So Dropout and the like draw the forward pass's masks again, and
BatchNormalization updates its statistics once per step. Randomness that no seed generator of the layer holds
(tf.random ops, keras.random without a seed) is not replayed. f and g must be Keras layers. The layer serializes
(get_config/from_config), so a model holding it saves and loads as a .keras file. See docs/reversible.md.
"""
from __future__ import annotations

import tensorflow as tf
import keras
from tensorflow.python.eager import record

from revnet.reversible.coupling import get_coupling

MODES = ("reversible", "autodiff", "recompute")


def _tf_variables(layer):
    """The tf.Variables behind a Keras layer's trainable weights: custom_gradient hands those, not KerasVariables."""
    return [getattr(v, "value", v) for v in layer.trainable_variables]


def _values(variables):
    """(variable, its current value) pairs, to assign back later."""
    return [(v, tf.identity(v.value)) for v in variables]


def _assign(values) -> None:
    for variable, value in values:
        variable.assign(value)


class _Replayed:
    """One call of a layer in the forward pass that can be run again exactly, for a backward recomputation.

    The first run records the layer's non-trainable variables (seed-generator states, moving statistics) before
    it; each later run starts from those values and leaves the variables as it found them.
    """

    def __init__(self, layer, training):
        self.layer, self.training, self.before = layer, training, None

    def __call__(self, x):
        if self.before is None:
            self.before = _values(self.layer.non_trainable_variables)
            return self.layer(x, training=self.training)
        now = _values(self.layer.non_trainable_variables)
        _assign(self.before)
        out = self.layer(x, training=self.training)
        _assign(now)
        return out


def _rebuild_half(coupling, run, weights, x_in, y, dy):
    """Rebuild x from y = coupling.forward(x, run(x_in)), re-running `run` under a tape, and pull dy back through
    this half-block: (x, gradient of x_in, gradient of x, gradients of `weights`, the tensors or variables `run`
    reads). The list form and the factory form (stacked.py) both walk back through this."""
    # In a graph (tf.function) the re-run waits for dy, the gradient of the half-block after this one. Otherwise
    # nothing orders the reconstruction chain after the gradients: the executor may rebuild every block ahead of
    # the backward pass and keep all their taped activations alive, so memory grows with depth as autodiff's does.
    # (The identities also keep grappler from merging the last block's re-run with its forward call.)
    with tf.control_dependencies([dy]):
        x_in, y = tf.identity(x_in), tf.identity(y)
    with tf.GradientTape() as tape:
        tape.watch([x_in] + weights)
        fx = run(x_in)
        with tape.stop_recording():
            x = coupling.inverse(y, fx)
        tape.watch(x)
        y = coupling.forward(x, fx)
    grads = tape.gradient(y, [x_in, x] + weights, output_gradients=dy,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return x, grads[0], grads[1], grads[2:]


def _taped_half(coupling, fn, x_in, y, dy, var_grads):
    """`_rebuild_half` for a replayed layer: (x, gradient of x_in, gradient of x); the gradients of fn's weights
    are added into `var_grads`."""
    fn_vars = _tf_variables(fn.layer)
    x, dx_in, dx, grads = _rebuild_half(coupling, fn, fn_vars, x_in, y, dy)
    for v, d in zip(fn_vars, grads, strict=True):
        var_grads[id(v)] = var_grads.get(id(v), 0) + d
    return x, dx_in, dx


def _check_layers(blocks) -> None:
    """Only a Keras layer's state can be found and replayed, and only a Keras layer serializes."""
    for pair in blocks:
        if len(pair) != 2 or not all(isinstance(fn, keras.layers.Layer) for fn in pair):
            raise TypeError(f"each block must be a pair (f, g) of Keras layers; got {pair!r}")


@keras.saving.register_keras_serializable(package="revnet")
class ReversibleSequence(keras.layers.Layer):
    """Reversible blocks `[(f, g), ...]` over the two halves of the input along `split_axis`.

    `coupling` is "additive", "affine" or a revnet.reversible.Coupling; `mode` one of MODES.
    """

    def __init__(self, blocks, coupling="additive", mode: str = "reversible", split_axis: int = -1, **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(map(repr, MODES))}")
        self.blocks = [tuple(pair) for pair in blocks]
        _check_layers(self.blocks)
        self.coupling = get_coupling(coupling, split_axis)
        self.mode = mode
        self.split_axis = split_axis

    @classmethod
    def from_factory(cls, make_block, num_blocks: int, coupling="additive", mode: str = "reversible",
                     split_axis: int = -1, **kwargs):
        """`num_blocks` blocks, each a new `(f, g)` pair from `make_block()`, run as one `tf.while_loop` over their
        weights stacked along a leading `num_blocks` axis (a StackedReversibleSequence, reversible/stacked.py).
        The graph does not grow with `num_blocks`; in "reversible" mode neither does the activation memory."""
        # Not imported: reversible/stacked.py subclasses this class (an import here would be a cycle). The package
        # imports it, which registers it with Keras.
        stacked = keras.saving.get_registered_object("revnet>StackedReversibleSequence")
        return stacked(make_block, num_blocks, coupling=coupling, mode=mode, split_axis=split_axis, **kwargs)

    def _split(self, x):
        if x.shape[self.split_axis] is not None and x.shape[self.split_axis] % 2:
            raise ValueError(f"split axis has odd size {x.shape[self.split_axis]}; expected an even size")
        return tf.split(x, 2, axis=self.split_axis)

    def _block(self, f, g, x1, x2):
        """One block's forward pass, f and g being one-argument callables."""
        y1 = self.coupling.forward(x1, f(x2))
        return y1, self.coupling.forward(x2, g(y1))

    def inverse(self, y):
        """The input that `call` maps to y (f and g run in inference mode)."""
        y1, y2 = self._split(y)
        for f, g in reversed(self.blocks):
            y2 = self.coupling.inverse(y2, g(y1))
            y1 = self.coupling.inverse(y1, f(y2))
        return tf.concat([y1, y2], axis=self.split_axis)

    def call(self, x, training=None):
        x1, x2 = self._split(x)
        run = {"autodiff": self._autodiff, "recompute": self._recompute, "reversible": self._reversible}[self.mode]
        return tf.concat(run(x1, x2, training), axis=self.split_axis)

    def _autodiff(self, x1, x2, training):
        """Plain calls: f and g inherit `training` from this layer's call."""
        for f, g in self.blocks:
            x1, x2 = self._block(f, g, x1, x2)
        return x1, x2

    def _recompute(self, x1, x2, training):
        for f, g in self.blocks:
            x1, x2 = tf.recompute_grad(self._replaying_block(f, g, training))(x1, x2)
        return x1, x2

    def _replaying_block(self, f, g, training):
        """A block for tf.recompute_grad: its re-run in the backward pass replays the forward pass's f and g calls."""
        f, g = _Replayed(f, training), _Replayed(g, training)

        def block(x1, x2):
            return self._block(f, g, x1, x2)

        return block

    def _reversible(self, x1, x2, training):
        calls = [(_Replayed(f, training), _Replayed(g, training)) for f, g in self.blocks]

        @tf.custom_gradient
        def run(x1, x2):
            with record.stop_recording():   # as in tf.recompute_grad: a tape outside keeps no activation
                for f, g in calls:
                    x1, x2 = self._block(f, g, x1, x2)

            def grad(dy1, dy2, variables=None):
                return self._backward(calls, x1, x2, dy1, dy2, variables or [])

            return (x1, x2), grad

        return run(x1, x2)

    def _backward(self, calls, y1, y2, dy1, dy2, variables):
        """Gradients of the blocks' input and of `variables` from their output and its gradient, block by block."""
        var_grads = {}
        for f, g in reversed(calls):
            x2, dy1_through_g, dx2 = _taped_half(self.coupling, g, y1, y2, dy2, var_grads)
            dy1 = dy1 + dy1_through_g
            x1, dx2_through_f, dx1 = _taped_half(self.coupling, f, x2, y1, dy1, var_grads)
            y1, y2, dy1, dy2 = x1, x2, dx1, dx2 + dx2_through_f
        return (dy1, dy2), [var_grads[id(v)] if id(v) in var_grads else tf.zeros_like(v) for v in variables]

    def get_config(self) -> dict:
        serialize = keras.saving.serialize_keras_object
        return {**super().get_config(), "blocks": [[serialize(f), serialize(g)] for f, g in self.blocks],
                "coupling": serialize(self.coupling), "mode": self.mode, "split_axis": self.split_axis}

    @classmethod
    def from_config(cls, config):
        deserialize = keras.saving.deserialize_keras_object
        blocks = [tuple(deserialize(fn) for fn in pair) for pair in config["blocks"]]
        return super().from_config({**config, "blocks": blocks, "coupling": deserialize(config["coupling"])})
