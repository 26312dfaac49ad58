"""Momentum SGD with L2 weight decay and an optional dynamic loss scale, as a checkpointable tf.Module.

The models are plain tf.Modules (Keras 3 is not involved), so the optimizer is ours too. Under
tf.distribute the update follows the documented pattern: each replica computes its gradients,
`merge_call` enters cross-replica context, `batch_reduce_to(SUM)` adds them across replicas (the
loss was already divided by the GLOBAL batch size) and `extended.update` applies the same update to
every replica's copy of each variable.
"""
from __future__ import annotations

from typing import List, Optional

import tensorflow as tf


class DynamicLossScale(tf.Module):
    """Loss scale for float16: halve on non-finite gradients (and skip the update), double after
    `growth_interval` finite steps in a row."""

    def __init__(self, initial_scale: float = 2.0 ** 15, growth_interval: int = 2000):
        super().__init__(name="loss_scale")
        self.growth_interval = growth_interval
        self.scale = tf.Variable(initial_scale, dtype=tf.float32, trainable=False, name="scale",
                                 aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="good_steps",
                                      aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def update(self, finite):
        """Cross-replica context: adjust the scale after a step whose gradients were `finite`."""
        grow = tf.logical_and(finite, self.good_steps + 1 >= self.growth_interval)
        self.scale.assign(tf.where(finite, tf.where(grow, self.scale * 2.0, self.scale),
                                   tf.maximum(self.scale / 2.0, 1.0)))
        self.good_steps.assign(tf.where(tf.logical_and(finite, tf.logical_not(grow)), self.good_steps + 1,
                                        tf.zeros_like(self.good_steps)))


class MomentumSGD(tf.Module):
    """v <- momentum * v + (g + wd * w);  w <- w - lr * v   (the original code's "mom" optimizer)."""

    def __init__(self, variables: List[tf.Variable], momentum: float, weight_decay: float,
                 decay_variables: List[tf.Variable], loss_scale: Optional[DynamicLossScale] = None):
        super().__init__(name="momentum_sgd")
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.loss_scale = loss_scale
        decayed = {id(v) for v in decay_variables}
        self.decays = [id(v) in decayed for v in variables]
        # Slots are created here, so constructing the optimizer inside strategy.scope() mirrors them.
        self.velocities = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False,
                                       name=v.name.split(":")[0].replace("/", "_") + "_velocity")
                           for v in variables]
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations",
                                      aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def state_without_loss_scale(self) -> tf.train.Checkpoint:
        """This optimizer's checkpointed state under the same paths, minus its loss scale: what a checkpoint
        saved without one (a float32 or bf16 run, imported weights) can restore into an fp16 run."""
        return tf.train.Checkpoint(velocities=self.velocities, iterations=self.iterations)

    def apply_gradients(self, gradients, variables, learning_rate):
        """Replica context: all-reduce (sum) `gradients` and apply one update to `variables`."""
        context = tf.distribute.get_replica_context()
        return context.merge_call(self._apply_cross_replica, args=(list(gradients), list(variables), learning_rate))

    def _apply_cross_replica(self, strategy, gradients, variables, learning_rate):
        pairs = list(zip(gradients, variables, strict=True))
        reduced = strategy.extended.batch_reduce_to(tf.distribute.ReduceOp.SUM, pairs)
        finite = tf.constant(True)
        if self.loss_scale is not None:
            reduced = [g / self.loss_scale.scale for g in reduced]
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in reduced])
        for gradient, variable, velocity, decay in zip(reduced, variables, self.velocities, self.decays, strict=True):
            strategy.extended.update(variable, self._update_one, args=(gradient, velocity, learning_rate, decay,
                                                                       finite), group=False)
        if self.loss_scale is not None:
            self.loss_scale.update(finite)
        self.iterations.assign_add(1)
        return finite

    def _update_one(self, variable, gradient, velocity, learning_rate, decay, finite):
        # Runs once per replica device; `variable` and `velocity` are that device's copies.
        gradient = tf.cast(gradient, variable.dtype)
        if decay:
            gradient += self.weight_decay * variable
        new_velocity = self.momentum * velocity + gradient
        # A non-finite float16 step leaves weights and velocities unchanged (the loss scale halves).
        new_velocity = tf.where(finite, new_velocity, velocity)
        velocity.assign(new_velocity)
        return variable.assign_sub(tf.where(finite, tf.cast(learning_rate, variable.dtype) * new_velocity,
                                            tf.zeros_like(variable)))
