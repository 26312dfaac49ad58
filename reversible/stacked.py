"""The factory form of ReversibleSequence: `num_blocks` identical blocks as one `tf.while_loop` over stacked weights.

    layer = ReversibleSequence.from_factory(make_block, num_blocks, coupling=..., mode=..., split_axis=...)

`make_block()` returns one new `(f, g)` pair of Keras layers on each call. When the layer is built, it calls
`make_block()` `num_blocks` times, builds every pair on a half of the input, and stacks the pairs' variables into
one variable per template variable with a leading `num_blocks` axis: the layer's own weights. The first pair is
kept as the template that every loop iteration runs. The other pairs only supply initial values and are dropped.
So the initial weights are those of the list form `[make_block() for _ in range(num_blocks)]`.

Iteration i takes slice i of every stacked variable and runs the template's f and g on it inside a
`keras.StatelessScope`: variables are read from the mapping, and assignments (moving statistics, seed-generator
states) go to the scope, not to the variables. Each call therefore maps (weights, state) to (output, new state)
with no side effect. The state a block leaves is written to a TensorArray, and the stacked non-trainable
variables are assigned once, after the forward loop. The backward pass runs block i again from the state block i
started the step with (a snapshot read before the forward loop). So a re-run draws the forward pass's dropout
masks again and never moves the BatchNormalization statistics a second time.

Modes: "reversible" runs the forward loop under a custom gradient. Its backward pass is a second `tf.while_loop`
from the last block to the first. It rebuilds each block's input from its output, re-runs f and g under a tape,
and writes each slice's weight gradients into a TensorArray, which stacks into the stacked variable's gradient
(as models/reversible.py does). "recompute" keeps each block's input in a TensorArray and re-runs the block from
it in the same backward loop. "autodiff" is the forward loop with plain autodiff (while_v2 keeps every
iteration's activations): the reference.
"""
from __future__ import annotations

import copy
import gc

import tensorflow as tf
import keras
from tensorflow.python.eager import record

from revnet.reversible.sequence import ReversibleSequence, _check_layers, _rebuild_half


class _Template:
    """The (f, g) pair the loop runs, out of sight of Keras' attribute tracking: its own variables are not the
    layer's weights (the stacked variables are), so they must not be saved, trained or counted."""

    def __init__(self, f, g):
        self.f, self.g = f, g


def _stateless(layer, weights, state, x, training):
    """layer(x) with its trainable variables read as `weights` and its non-trainable ones as `state`: the output
    and the state the call leaves. A full `__call__` inside the scope (not `layer.stateless_call`, which runs
    `layer.call` alone): inputs are cast and `training` reaches nested layers as in an ordinary call."""
    mapping = list(zip(layer.trainable_variables, weights, strict=True)) + \
        list(zip(layer.non_trainable_variables, state, strict=True))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        out = layer(x, training=training)
    return out, [scope.get_current_value(v) for v in layer.non_trainable_variables]


def _check_supported(pair) -> None:
    """Regularizers and constraints (`kernel_regularizer`, `activity_regularizer`, `kernel_constraint`, ...) act
    on the template's own variables or outputs, which the loop does not train: refuse them."""
    for fn in pair:
        for sub in fn._flatten_layers(include_self=True):
            found = sorted(name for name, value in vars(sub).items()
                           if name.endswith(("_regularizer", "_constraint")) and value is not None)
            if found:
                raise ValueError(f"ReversibleSequence.from_factory: layer {sub.name!r} ({type(sub).__name__}) sets "
                                 f"{', '.join(found)}; regularizers and constraints are not supported in the factory "
                                 f"form (the loop runs a template on stacked weights, which they would not see). "
                                 f"Use the list form, or add the penalty on the stacked weights to your loss.")


def _build_on(pairs, half) -> None:
    """Build every unbuilt f and g by a symbolic call on a half of the input (g's input, y1, has its shape too)."""
    with tf.init_scope():
        for pair in pairs:
            for fn in pair:
                if not fn.built:
                    fn(half)


def _check_distinct(pairs) -> None:
    seen = {}
    for k, pair in enumerate(pairs):
        for role, fn in zip("fg", pair, strict=True):
            for v in fn.variables:
                if id(v) in seen:
                    raise ValueError(f"make_block() must return new layers on each call: variable {v.path!r} is in "
                                     f"both {seen[id(v)]} and block {k}'s {role}")
                seen[id(v)] = f"block {k}'s {role}"


@keras.saving.register_keras_serializable(package="revnet")
class StackedReversibleSequence(ReversibleSequence):
    """`num_blocks` blocks from `make_block()`, run as a `tf.while_loop` over stacked weights.

    Build it with `ReversibleSequence.from_factory(make_block, num_blocks, ...)`; see the module docstring.
    """

    def __init__(self, make_block, num_blocks: int, coupling="additive", mode: str = "reversible",
                 split_axis: int = -1, **kwargs):
        super().__init__([], coupling=coupling, mode=mode, split_axis=split_axis, **kwargs)
        if not callable(make_block):
            raise TypeError(f"make_block must be a function returning one (f, g) pair of Keras layers; "
                            f"got {make_block!r}")
        if int(num_blocks) != num_blocks or num_blocks < 1:
            raise ValueError(f"num_blocks must be a positive integer; got {num_blocks!r}")
        self.make_block = make_block
        self.num_blocks = int(num_blocks)
        self._template = _Template(*self._new_block())

    def _new_block(self):
        pair = self.make_block()
        if not isinstance(pair, (tuple, list)):
            raise TypeError(f"make_block() must return one (f, g) pair of Keras layers; got {pair!r}")
        pair = tuple(pair)
        _check_layers([pair])
        if pair[0] is pair[1]:
            raise ValueError("make_block() returned the same layer as f and g; the factory form stacks f's and g's "
                             "weights separately, so f and g must be two layers")
        _check_supported(pair)
        return pair

    # --- building: the stacked variables --------------------------------------------------------------------
    def _half_shape(self, input_shape):
        shape = list(input_shape)
        size = shape[self.split_axis]
        if size is not None and size % 2:
            raise ValueError(f"split axis has odd size {size}; expected an even size")
        shape[self.split_axis] = None if size is None else size // 2
        return tuple(shape)

    def build(self, input_shape):
        half = self._half_shape(input_shape)
        pairs = [(self._template.f, self._template.g)] + [self._new_block() for _ in range(self.num_blocks - 1)]
        _build_on(pairs, keras.KerasTensor(half, dtype=self.compute_dtype))
        _check_distinct(pairs)
        self._stacked = {role: self._stack([pair[index] for pair in pairs], role)
                         for role, index in (("f", 0), ("g", 1))}
        # The other pairs' variables are copies now. Their layers sit in reference cycles (the nodes of the
        # symbolic build call): without a collection, a block's worth of weights per block stays allocated.
        del pairs
        gc.collect()
        self.built = True

    def _stack(self, layers, role):
        """(trainable, state): one new variable per variable of layers[0], stacking that variable of every layer."""
        def variables(layer):
            return layer.trainable_variables + layer.non_trainable_variables

        first = variables(layers[0])
        for k, layer in enumerate(layers[1:], 1):
            if [(v.shape, v.dtype) for v in variables(layer)] != [(v.shape, v.dtype) for v in first]:
                raise ValueError(f"make_block() returned blocks of different structure: block {k}'s {role} has "
                                 f"variables {[(v.shape, v.dtype) for v in variables(layer)]}, block 0's "
                                 f"{[(v.shape, v.dtype) for v in first]}")
        stacked = []
        for j, v in enumerate(first):
            with tf.init_scope():
                value = tf.stack([variables(layer)[j].value for layer in layers])
            stacked.append(self.add_weight(shape=value.shape, dtype=v.dtype, trainable=v.trainable,
                                           initializer=lambda shape, dtype, value=value: value,
                                           name=f"{role}_{v.name}", autocast=False, aggregation=v.aggregation))
        num_trainable = len(layers[0].trainable_variables)
        return stacked[:num_trainable], stacked[num_trainable:]

    def compute_output_shape(self, input_shape):
        self._half_shape(input_shape)
        return input_shape

    # --- running ---------------------------------------------------------------------------------------------
    def _read(self):
        """(trainable, state): the stacked weights as tensors, f's then g's; the stacked state, as it is before
        this call (a copy, read before the loop assigns the new state)."""
        weights = [tf.convert_to_tensor(v.value) for role in "fg" for v in self._stacked[role][0]]
        state = [tf.identity(v.value) for role in "fg" for v in self._stacked[role][1]]
        return weights, state

    def _split_lists(self, values, which):
        """values (f's then g's) -> (f's, g's), for which 0 (trainable) or 1 (state)."""
        n = len(self._stacked["f"][which])
        return values[:n], values[n:]

    def _at(self, values, index):
        """Slice `index` of each stacked value. Indexing, not tf.gather: autodiff's gradient of a gather is
        IndexedSlices, of a slice a dense tensor of the stacked shape, which every optimizer takes."""
        return [value[index] for value in values]

    def _block(self, p, s, h1, h2, training):
        """One block on its slices p (weights) and s (state): (y1, y2, the state it leaves, f's then g's)."""
        f, g = self._template.f, self._template.g
        (fw, gw), (fs, gs) = self._split_lists(p, 0), self._split_lists(s, 1)
        fx, fs = _stateless(f, fw, fs, h2, training)
        h1 = self.coupling.forward(h1, fx)
        gx, gs = _stateless(g, gw, gs, h1, training)
        return h1, self.coupling.forward(h2, gx), fs + gs

    def _forward_loop(self, x1, x2, weights, state, training, keep_inputs=False):
        """(y1, y2, new stacked state, stacked block inputs (x1s, x2s) if keep_inputs else None)."""
        n = self.num_blocks
        state_arrays = [tf.TensorArray(s.dtype, size=n, element_shape=s.shape[1:]) for s in state]
        input_arrays = [tf.TensorArray(x.dtype, size=n) for x in (x1, x2)] if keep_inputs else []

        def body(index, h1, h2, *arrays):
            inputs = [array.write(index, h) for array, h in zip(arrays[len(state):], (h1, h2), strict=True)] \
                if keep_inputs else []
            h1, h2, new_state = self._block(self._at(weights, index), self._at(state, index), h1, h2, training)
            arrays = [array.write(index, s) for array, s in zip(arrays[:len(state)], new_state, strict=True)]
            return (index + 1, h1, h2, *arrays, *inputs)

        # parallel_iterations=1: see models/reversible.py (a loop run ahead keeps its activations alive).
        _, y1, y2, *arrays = tf.while_loop(lambda index, *_: index < n, body,
                                           (tf.constant(0), x1, x2, *state_arrays, *input_arrays),
                                           parallel_iterations=1)
        new_state = [array.stack() for array in arrays[:len(state)]]
        inputs = [array.stack() for array in arrays[len(state):]] if keep_inputs else None
        return y1, y2, new_state, inputs

    def _assign_state(self, new_state):
        for variable, value in zip([v for role in "fg" for v in self._stacked[role][1]], new_state, strict=True):
            variable.assign(value)

    def call(self, x, training=None):
        x1, x2 = self._split(x)
        weights, state = self._read()
        if self.mode == "autodiff":
            y1, y2, new_state, _ = self._forward_loop(x1, x2, weights, state, training)
            self._assign_state(new_state)
        else:
            y1, y2 = self._custom_gradient_loop(x1, x2, weights, state, training)
        return tf.concat([y1, y2], axis=self.split_axis)

    def _custom_gradient_loop(self, x1, x2, weights, state, training):
        recompute = self.mode == "recompute"

        @tf.custom_gradient
        def run(x1, x2, *weights):
            with record.stop_recording():   # a tape outside keeps no activation of the forward loop
                y1, y2, new_state, inputs = self._forward_loop(x1, x2, list(weights), state, training,
                                                               keep_inputs=recompute)
                self._assign_state(new_state)   # once per step; the backward loop re-runs from `state`

            def grad(dy1, dy2, variables=None):
                dx1, dx2, weight_grads = self._backward_loop(y1, y2, dy1, dy2, list(weights), state, training,
                                                             inputs)
                return (dx1, dx2, *weight_grads), [tf.zeros_like(v) for v in variables or []]

            return (y1, y2), grad

        return run(x1, x2, *weights)

    # --- the backward loop -----------------------------------------------------------------------------------
    def _backward_loop(self, y1, y2, dy1, dy2, weights, state, training, inputs):
        """From the last block to the first: (dx1, dx2, [stacked gradient per stacked trainable weight]). Each
        block's input is rebuilt from its output (reversible) or read from `inputs` (recompute)."""
        n = self.num_blocks
        grad_arrays = [tf.TensorArray(w.dtype, size=n, element_shape=w.shape[1:]) for w in weights]

        def body(index, h1, h2, dh1, dh2, *arrays):
            p, s = self._at(weights, index), self._at(state, index)
            if inputs is None:
                h1, h2, dh1, dh2, grads = self._block_backward(p, s, h1, h2, dh1, dh2, training)
            else:
                h1, h2, dh1, dh2, grads = self._block_recompute(p, s, inputs[0][index], inputs[1][index], dh1, dh2,
                                                                training)
            arrays = [array.write(index, d) for array, d in zip(arrays, grads, strict=True)]
            return (index - 1, h1, h2, dh1, dh2, *arrays)

        _, _, _, dx1, dx2, *arrays = tf.while_loop(lambda index, *_: index >= 0, body,
                                                   (tf.constant(n - 1), y1, y2, dy1, dy2, *grad_arrays),
                                                   parallel_iterations=1)
        return dx1, dx2, [array.stack() for array in arrays]

    def _block_backward(self, p, s, y1, y2, dy1, dy2, training):
        """Rebuild block input (x1, x2) from (y1, y2), pull (dy1, dy2) back: (x1, x2, dx1, dx2, [f's, g's grads])."""
        (fw, gw), (fs, gs) = self._split_lists(p, 0), self._split_lists(s, 1)
        x2, dy1_through_g, dx2, g_grads = self._taped_half(self._template.g, gw, gs, y1, y2, dy2, training)
        dy1 = dy1 + dy1_through_g
        x1, dx2_through_f, dx1, f_grads = self._taped_half(self._template.f, fw, fs, x2, y1, dy1, training)
        return x1, x2, dx1, dx2 + dx2_through_f, f_grads + g_grads

    def _taped_half(self, fn, weights, state, x_in, y, dy, training):
        """Rebuild x from y = coupling.forward(x, fn(x_in)) and pull dy back through this half-block:
        (x, gradient of x_in, gradient of x, gradients of fn's weights). fn re-runs from the state it started the
        step with: the forward pass's masks, and its new state is dropped."""
        def run(h):
            return _stateless(fn, weights, state, h, training)[0]
        return _rebuild_half(self.coupling, run, weights, x_in, y, dy)

    def _block_recompute(self, p, s, x1, x2, dy1, dy2, training):
        """Re-run the block from its kept input: (x1, x2, dx1, dx2, [f's, g's grads])."""
        with tf.control_dependencies([dy1, dy2]):
            x1, x2 = tf.identity(x1), tf.identity(x2)
        with tf.GradientTape() as tape:
            tape.watch([x1, x2] + p)
            y1, y2, _ = self._block(p, s, x1, x2, training)
        grads = tape.gradient([y1, y2], [x1, x2] + p, output_gradients=[dy1, dy2],
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return x1, x2, grads[0], grads[1], grads[2:]

    def inverse(self, y):
        """The input that `call` maps to y (f and g run in inference mode), by a loop from the last block."""
        if not self.built:
            self.build(y.shape)
        weights, state = self._read()
        f, g = self._template.f, self._template.g
        y1, y2 = self._split(y)

        def body(index, h1, h2):
            (fw, gw), (fs, gs) = self._split_lists(self._at(weights, index), 0), \
                self._split_lists(self._at(state, index), 1)
            h2 = self.coupling.inverse(h2, _stateless(g, gw, gs, h1, False)[0])
            return index - 1, self.coupling.inverse(h1, _stateless(f, fw, fs, h2, False)[0]), h2

        _, x1, x2 = tf.while_loop(lambda index, *_: index >= 0, body, (tf.constant(self.num_blocks - 1), y1, y2))
        return tf.concat([x1, x2], axis=self.split_axis)

    # --- serialization ---------------------------------------------------------------------------------------
    def get_config(self) -> dict:
        serialize = keras.saving.serialize_keras_object
        config = super().get_config()
        del config["blocks"]
        return {**config, "block": [serialize(self._template.f), serialize(self._template.g)],
                "num_blocks": self.num_blocks}

    @classmethod
    def from_config(cls, config):
        """The template's config stands in for `make_block`: every block is rebuilt from it (its weights and
        state are then loaded, in a .keras file, into the stacked variables)."""
        config = dict(config)
        f_config, g_config = config.pop("block")
        deserialize = keras.saving.deserialize_keras_object

        def make_block():
            return deserialize(copy.deepcopy(f_config)), deserialize(copy.deepcopy(g_config))

        return cls(make_block, coupling=deserialize(config.pop("coupling")), **config)
