"""The reversible stack: a run of identical reversible blocks whose backward pass rebuilds activations.

    y1 = x1 + F(x2)        x2 = y2 - G(y1)
    y2 = x2 + G(y1)        x1 = y1 - F(x2)

The weights of the stage's blocks are stacked into one variable per parameter
(`[num_blocks, ...]`). In "reversible" mode the forward pass and the custom backward pass are both
`tf.while_loop`s over the block index, and the backward pass keeps nothing from the forward pass
except the stage's output: each block's input is reconstructed from its output (`_block_backward`,
the one inverse, also behind `reconstruct`), F and G are re-run under a tape, and the slice gradients
are written into a TensorArray that stacks into the variable-shaped gradient. "autodiff" mode runs the
same blocks on the same variables unrolled, with plain autodiff storing every activation; it is the
reference for the gradient-parity tests and the memory benchmark. "recompute" mode is that unrolled
stack with each block under `tf.recompute_grad` (stores each block's input).

Mixed precision: F and G compute in `compute_dtype` (bfloat16/float16), but the residual stream
(x1, x2), the additions and the reconstruction stay in the stream's dtype (float32), so the rounding
of a low-precision stream does not compound through the inverse.

The stack is independent of any architecture: F and G are any `ResidualFn`.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import tensorflow as tf

from revnet.models.layers import (BatchStats, ResidualFn, SeedSequence, create_variables, in_compute_dtype, prefixed,
                                  sub_params)
from revnet.models.network import update_moving_stats
from revnet.models.modes import MODES


class ReversibleStack(tf.Module):
    """`num_blocks` reversible blocks sharing the residual functions `f` and `g` (weights stacked)."""

    def __init__(self, *, f: ResidualFn, g: ResidualFn, num_blocks: int, name: str, dtype: tf.DType,
                 seeds: SeedSequence, bn_momentum: float, mode: str = "reversible",
                 compute_dtype: Optional[tf.DType] = None):
        super().__init__(name=name.replace("/", "_"))
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        self.f, self.g = f, g
        self.part = name.split("/")[0]   # the stage, for --freeze (models/parts.py)
        self.num_blocks = int(num_blocks)
        self.mode = mode
        # Under XLA (train --jit) the loops are unrolled in Python: XLA compiles convolution backprops inside a
        # `while` body with its slow generic emitter (`benchmark train` on CPU: 15-30x slower per step), not
        # inside straight code. The price: XLA then keeps activation memory growing with depth.
        self.unrolled = False
        self.bn_momentum = bn_momentum
        self.compute_dtype = compute_dtype or dtype
        self.param_specs = prefixed("f", f.params()) + prefixed("g", g.params())
        self.trainable_names = [spec.name for spec in self.param_specs if spec.trainable]
        self.bn_names = [spec.name[: -len("/moving_mean")] for spec in self.param_specs
                         if spec.kind == "moving_mean"]
        with self.name_scope:
            self.params = create_variables(self.param_specs, name, dtype, seeds, num_stacked=self.num_blocks)

    # --- one block -------------------------------------------------------------------------------
    def _f(self, p, x, training: bool, stats: BatchStats):
        return in_compute_dtype(self.f, sub_params(p, "f"), x, training, stats, self.compute_dtype)

    def _g(self, p, x, training: bool, stats: BatchStats):
        return in_compute_dtype(self.g, sub_params(p, "g"), x, training, stats, self.compute_dtype)

    def _block(self, p: Dict[str, tf.Tensor], x1, x2, training: bool) -> Tuple[tf.Tensor, tf.Tensor, BatchStats]:
        f_stats: BatchStats = {}
        g_stats: BatchStats = {}
        y1 = x1 + self._f(p, x2, training, f_stats)
        y2 = x2 + self._g(p, y1, training, g_stats)
        stats = {f"f/{k}": v for k, v in f_stats.items()}
        stats.update({f"g/{k}": v for k, v in g_stats.items()})
        return y1, y2, stats

    def _block_backward(self, p, y1, y2, dy1, dy2):
        """The block inverse: rebuild a block's input from its output and back-propagate the output
        gradients through it (paper, Algorithm 1). Returns (x1, x2, dx1, dx2, {param: gradient})."""
        g_names = [name for name in p if name.startswith("g/")]
        f_names = [name for name in p if name.startswith("f/")]
        with tf.GradientTape() as tape:
            tape.watch([y1] + [p[n] for n in g_names])
            g_out = self._g(p, y1, True, {})
        g_grads = tape.gradient(g_out, [y1] + [p[n] for n in g_names], output_gradients=dy2,
                                unconnected_gradients=tf.UnconnectedGradients.ZERO)
        # x2 only needs G's output, so without this the executor may start re-running F (a second tape)
        # while G's backward still holds its own; waiting keeps one residual function's activations alive.
        # It also ties the reconstruction chain to the gradient chain, a second guard (beside
        # parallel_iterations=1) against reconstructing blocks ahead of their gradients.
        with tf.control_dependencies(g_grads):
            x2 = y2 - g_out
        dz1 = dy1 + g_grads[0]
        with tf.GradientTape() as tape:
            tape.watch([x2] + [p[n] for n in f_names])
            f_out = self._f(p, x2, True, {})
        f_grads = tape.gradient(f_out, [x2] + [p[n] for n in f_names], output_gradients=dz1,
                                unconnected_gradients=tf.UnconnectedGradients.ZERO)
        x1 = y1 - f_out
        param_grads = dict(zip(g_names, g_grads[1:], strict=True))
        param_grads.update(zip(f_names, f_grads[1:], strict=True))
        return x1, x2, dz1, dy2 + f_grads[0], param_grads

    def _backward_loop(self, y1, y2, dy1, dy2, weights: List[tf.Tensor]):
        """Walk the blocks from last to first: (x1, x2, dx1, dx2, [stacked gradient per weight])."""
        names = self.trainable_names
        if self.unrolled:
            per_block = []
            for index in reversed(range(self.num_blocks)):
                p = {name: weight[index] for name, weight in zip(names, weights, strict=True)}
                # Each block's reconstruction waits for the previous block's gradients, as in the loop.
                with tf.control_dependencies([dy1, dy2]):
                    y1, y2, dy1, dy2, param_grads = self._block_backward(p, tf.identity(y1), tf.identity(y2),
                                                                         dy1, dy2)
                per_block.append(param_grads)
            stacked = [tf.stack([grads[name] for grads in reversed(per_block)]) for name in names]
            return y1, y2, dy1, dy2, stacked
        grad_arrays = [tf.TensorArray(weight.dtype, size=self.num_blocks, element_shape=weight.shape[1:])
                       for weight in weights]

        def back_body(index, h1, h2, dh1, dh2, *arrays):
            p = {name: tf.gather(weight, index) for name, weight in zip(names, weights, strict=True)}
            h1, h2, dh1, dh2, param_grads = self._block_backward(p, h1, h2, dh1, dh2)
            arrays = [array.write(index, param_grads[name]) for name, array in zip(names, arrays, strict=True)]
            return (index - 1, h1, h2, dh1, dh2, *arrays)

        # parallel_iterations=1: see _forward_reversible.
        _, x1, x2, dx1, dx2, *arrays = tf.while_loop(
            lambda index, *_: index >= 0, back_body,
            (tf.constant(self.num_blocks - 1), y1, y2, dy1, dy2, *grad_arrays),
            parallel_iterations=1)
        return x1, x2, dx1, dx2, [array.stack() for array in arrays]

    def reconstruct(self, y1, y2):
        """The stack's input rebuilt from its output by the backward pass's own inverse (batch
        statistics from the rebuilt activations, as in training); for tests and numerics reports."""
        weights = [tf.convert_to_tensor(self.params[name]) for name in self.trainable_names]
        x1, x2, *_ = self._backward_loop(y1, y2, tf.zeros_like(y1), tf.zeros_like(y2), weights)
        return x1, x2

    # --- the ways to run the stack ---------------------------------------------------------------
    def __call__(self, x1, x2, training: bool = False):
        if not training:
            return self._forward_inference(x1, x2)
        weights = [tf.convert_to_tensor(self.params[name]) for name in self.trainable_names]
        if self.mode == "reversible":
            outputs = self._forward_reversible(x1, x2, *weights)
            y1, y2 = outputs[0], outputs[1]
            flat_stats = outputs[2:]
            stats = {name: (flat_stats[2 * k], flat_stats[2 * k + 1]) for k, name in enumerate(self.bn_names)}
        else:
            y1, y2, stats = self._forward_unrolled(x1, x2, weights, recompute=self.mode == "recompute")
        # Moving statistics are updated here, once per real forward pass, for all blocks at once
        # ([num_blocks, C] each); the recomputation in the backward pass never touches them.
        update_moving_stats(self.params, stats, self.bn_momentum)
        return y1, y2

    def _forward_unrolled(self, x1, x2, weights: List[tf.Tensor], recompute: bool = False):
        names = self.trainable_names

        def block(x1, x2, *block_weights):
            return self._block(dict(zip(names, block_weights, strict=True)), x1, x2, True)

        if recompute:
            block = tf.recompute_grad(block)
        per_block: List[BatchStats] = []
        for index in range(self.num_blocks):
            x1, x2, stats = block(x1, x2, *[weight[index] for weight in weights])
            per_block.append(stats)
        stacked = {name: (tf.stack([s[name][0] for s in per_block]), tf.stack([s[name][1] for s in per_block]))
                   for name in self.bn_names}
        return x1, x2, stacked

    def _forward_inference(self, x1, x2):
        values = {name: tf.convert_to_tensor(variable) for name, variable in self.params.items()}

        def body(index, h1, h2):
            p = {name: tf.gather(value, index) for name, value in values.items()}
            h1, h2, _ = self._block(p, h1, h2, False)
            return index + 1, h1, h2

        _, y1, y2 = tf.while_loop(lambda index, *_: index < self.num_blocks, body,
                                  (tf.constant(0), x1, x2))
        return y1, y2

    def _forward_reversible(self, x1, x2, *weights):
        names = self.trainable_names
        num_blocks = self.num_blocks

        # Weights come in as tensors (read outside), so the custom gradient returns their gradients
        # as ordinary input gradients and the tape carries them on to the variables, mirrored or not.
        @tf.custom_gradient
        def run(x1, x2, *weights):
            if self.unrolled:
                h1, h2, stacked = self._forward_unrolled(x1, x2, list(weights))
                flat = [tensor for name in self.bn_names for tensor in stacked[name]]

                def unrolled_grad(*output_grads):
                    _, _, dx1, dx2, weight_grads = self._backward_loop(h1, h2, output_grads[0], output_grads[1],
                                                                       list(weights))
                    return (dx1, dx2) + tuple(weight_grads)

                return (h1, h2, *flat), unrolled_grad
            stats_arrays = [tf.TensorArray(weights[0].dtype, size=num_blocks) for _ in range(2 * len(self.bn_names))]

            def body(index, h1, h2, *arrays):
                p = {name: tf.gather(weight, index) for name, weight in zip(names, weights, strict=True)}
                h1, h2, stats = self._block(p, h1, h2, True)
                arrays = [array.write(index, stats[self.bn_names[k // 2]][k % 2]) for k, array in enumerate(arrays)]
                return (index + 1, h1, h2, *arrays)

            # parallel_iterations=1 in both loops: with TF's default of 10 the executor may run a loop's
            # iterations ahead of each other, and a reconstruction run ahead keeps its taped activations
            # alive, which is most of what autodiff would have stored (measured: peak memory grew with
            # depth until this was set). The control dependency in _block_backward is a second guard.
            _, y1, y2, *arrays = tf.while_loop(lambda index, *_: index < num_blocks, body,
                                               (tf.constant(0), x1, x2, *stats_arrays),
                                               parallel_iterations=1)
            outputs = (y1, y2) + tuple(array.stack() for array in arrays)

            def grad(*output_grads):
                _, _, dx1, dx2, weight_grads = self._backward_loop(y1, y2, output_grads[0], output_grads[1],
                                                                   list(weights))
                return (dx1, dx2) + tuple(weight_grads)

            return outputs, grad

        return run(x1, x2, *weights)
