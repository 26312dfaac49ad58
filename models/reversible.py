"""The reversible stack: a run of identical reversible blocks whose backward pass rebuilds activations.

    y1 = x1 + F(x2)        x2 = y2 - G(y1)
    y2 = x2 + G(y1)        x1 = y1 - F(x2)

The weights of the stage's blocks are stacked into one variable per parameter
(`[num_blocks, ...]`). In "reversible" mode the forward pass and the custom backward pass are both
`tf.while_loop`s over the block index, and the backward pass keeps nothing from the forward pass
except the stage's output: each block's input is reconstructed from its output, F and G are re-run
under a tape, and the slice gradients are written into a TensorArray that stacks into the
variable-shaped gradient. "autodiff" mode runs the same blocks on the same variables unrolled, with
plain autodiff storing every activation; it is the reference for the gradient-parity tests and the
memory benchmark.

The stack is independent of any architecture: F and G are any `ResidualFn`.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import tensorflow as tf

from revnet.models.layers import BatchStats, ResidualFn, SeedSequence, create_variables, prefixed, sub_params
from revnet.models.network import update_moving_stats
from revnet.models.registry import MODES


class ReversibleStack(tf.Module):
    """`num_blocks` reversible blocks sharing the residual functions `f` and `g` (weights stacked)."""

    def __init__(self, f: ResidualFn, g: ResidualFn, num_blocks: int, name: str, dtype: tf.DType,
                 seeds: SeedSequence, bn_momentum: float, mode: str = "reversible"):
        super().__init__(name=name.replace("/", "_"))
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        self.f, self.g = f, g
        self.num_blocks = int(num_blocks)
        self.mode = mode
        self.bn_momentum = bn_momentum
        self.param_specs = prefixed("f", f.params()) + prefixed("g", g.params())
        self.trainable_names = [spec.name for spec in self.param_specs if spec.trainable]
        self.bn_names = [spec.name[: -len("/moving_mean")] for spec in self.param_specs
                         if spec.kind == "moving_mean"]
        with self.name_scope:
            self.params = create_variables(self.param_specs, name, dtype, seeds, num_stacked=self.num_blocks)

    # --- one block -------------------------------------------------------------------------------
    def _block(self, p: Dict[str, tf.Tensor], x1, x2, training: bool) -> Tuple[tf.Tensor, tf.Tensor, BatchStats]:
        f_stats: BatchStats = {}
        g_stats: BatchStats = {}
        y1 = x1 + self.f(sub_params(p, "f"), x2, training, f_stats)
        y2 = x2 + self.g(sub_params(p, "g"), y1, training, g_stats)
        stats = {f"f/{k}": v for k, v in f_stats.items()}
        stats.update({f"g/{k}": v for k, v in g_stats.items()})
        return y1, y2, stats

    def _block_inverse_and_grads(self, p, y1, y2, dy1, dy2):
        """Rebuild a block's input from its output and back-propagate through it (paper, Algorithm 1)."""
        p_f, p_g = sub_params(p, "f"), sub_params(p, "g")
        g_names = list(p_g)
        f_names = list(p_f)
        with tf.GradientTape() as tape:
            tape.watch(y1)
            tape.watch([p_g[n] for n in g_names])
            g_out = self.g(p_g, y1, True, {})
        grads = tape.gradient(g_out, [y1] + [p_g[n] for n in g_names], output_gradients=dy2,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        x2 = y2 - g_out
        dz1 = dy1 + grads[0]
        with tf.GradientTape() as tape:
            tape.watch(x2)
            tape.watch([p_f[n] for n in f_names])
            f_out = self.f(p_f, x2, True, {})
        f_grads = tape.gradient(f_out, [x2] + [p_f[n] for n in f_names], output_gradients=dz1,
                                unconnected_gradients=tf.UnconnectedGradients.ZERO)
        x1 = y1 - f_out
        param_grads = {f"g/{n}": gr for n, gr in zip(g_names, grads[1:])}
        param_grads.update({f"f/{n}": gr for n, gr in zip(f_names, f_grads[1:])})
        return x1, x2, dz1, dy2 + f_grads[0], param_grads

    # --- the three ways to run the stack ---------------------------------------------------------
    def __call__(self, x1, x2, training: bool = False):
        if not training:
            return self._forward_inference(x1, x2)
        weights = [tf.convert_to_tensor(self.params[name]) for name in self.trainable_names]
        if self.mode == "autodiff":
            y1, y2, stats = self._forward_unrolled(x1, x2, weights)
        else:
            outputs = self._forward_reversible(x1, x2, *weights)
            y1, y2 = outputs[0], outputs[1]
            flat_stats = outputs[2:]
            stats = {name: (flat_stats[2 * k], flat_stats[2 * k + 1]) for k, name in enumerate(self.bn_names)}
        # Moving statistics are updated here, once per real forward pass, for all blocks at once
        # ([num_blocks, C] each); the recomputation in the backward pass never touches them.
        update_moving_stats(self.params, stats, self.bn_momentum)
        return y1, y2

    def _forward_unrolled(self, x1, x2, weights: List[tf.Tensor]):
        per_block: List[BatchStats] = []
        for index in range(self.num_blocks):
            p = {name: weight[index] for name, weight in zip(self.trainable_names, weights)}
            x1, x2, stats = self._block(p, x1, x2, True)
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
            stats_arrays = [tf.TensorArray(weights[0].dtype, size=num_blocks) for _ in range(2 * len(self.bn_names))]

            def body(index, h1, h2, *arrays):
                p = {name: tf.gather(weight, index) for name, weight in zip(names, weights)}
                h1, h2, stats = self._block(p, h1, h2, True)
                arrays = [array.write(index, stats[self.bn_names[k // 2]][k % 2]) for k, array in enumerate(arrays)]
                return (index + 1, h1, h2, *arrays)

            _, y1, y2, *arrays = tf.while_loop(lambda index, *_: index < num_blocks, body,
                                               (tf.constant(0), x1, x2, *stats_arrays),
                                               parallel_iterations=1)
            outputs = (y1, y2) + tuple(array.stack() for array in arrays)

            # parallel_iterations=1 in both loops: the reconstruction chain (h1, h2) does not depend on
            # the gradients, so with TF's default of 10 the executor runs reconstructions up to ten
            # blocks ahead and keeps each one's taped activations alive, which is most of what
            # autodiff would have stored (measured: peak memory grew with depth until this was set).
            def grad(*output_grads):
                dy1, dy2 = output_grads[0], output_grads[1]
                grad_arrays = [tf.TensorArray(weight.dtype, size=num_blocks, element_shape=weight.shape[1:])
                               for weight in weights]

                def back_body(index, h1, h2, dh1, dh2, *arrays):
                    p = {name: tf.gather(weight, index) for name, weight in zip(names, weights)}
                    h1, h2, dh1, dh2, param_grads = self._block_inverse_and_grads(p, h1, h2, dh1, dh2)
                    arrays = [array.write(index, param_grads[name]) for name, array in zip(names, arrays)]
                    return (index - 1, h1, h2, dh1, dh2, *arrays)

                _, _, _, dx1, dx2, *arrays = tf.while_loop(
                    lambda index, *_: index >= 0, back_body,
                    (tf.constant(num_blocks - 1), y1, y2, dy1, dy2, *grad_arrays),
                    parallel_iterations=1)
                return (dx1, dx2) + tuple(array.stack() for array in arrays)

            return outputs, grad

        return run(x1, x2, *weights)

    def inverse(self, y1, y2, training: bool = True):
        """Reconstruct the stack's input from its output (used by tests and for debugging)."""
        values = {name: tf.convert_to_tensor(variable) for name, variable in self.params.items()}
        for index in reversed(range(self.num_blocks)):
            p = {name: value[index] for name, value in values.items()}
            y2 = y2 - self.g(sub_params(p, "g"), y1, training, {})
            y1 = y1 - self.f(sub_params(p, "f"), y2, training, {})
        return y1, y2
