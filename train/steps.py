"""The compiled training and evaluation steps (read top to bottom: forward, loss, backward, update)."""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np
import tensorflow as tf


def cross_entropy(labels, logits, label_smoothing: float = 0.0):
    """Per-example cross entropy; with label smoothing e the target is (1 - e) on the label plus e spread
    uniformly over every class: -(1 - e) log p_label - e * mean_k log p_k."""
    if not label_smoothing:
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    log_probabilities = tf.nn.log_softmax(logits)
    picked = tf.gather(log_probabilities, labels, batch_dims=1)
    return -((1.0 - label_smoothing) * picked + label_smoothing * tf.reduce_mean(log_probabilities, axis=-1))


def make_train_step(model, optimizer, strategy: tf.distribute.Strategy, global_batch_size: int, step, position,
                    learning_rate_fn: Callable, steps_per_call: int = 1, jit: bool = False,
                    label_smoothing: float = 0.0, variables=None):
    """`train_steps(iterator, num_steps) -> (loss, accuracy, all_finite)`: `num_steps` (<= `steps_per_call`)
    training steps in one call; loss and accuracy are the last step's, `all_finite` covers every step's loss.

    The loss is the per-example cross entropy summed and divided by the GLOBAL batch size on each
    replica, so the optimizer's cross-replica SUM of gradients is the gradient of the global mean.
    Batch norm uses each replica's own batch (as the original multi-GPU code did); its moving
    statistics are ON_READ/MEAN variables, so reading them averages the replicas. The learning rate
    is `learning_rate_fn(step)`, read inside the call, so several steps per call keep the schedule.
    With `jit`, each replica's forward and backward pass is one XLA computation; the cross-replica
    gradient sum and the update stay outside it (XLA compiles for one device). `variables` (default: all
    the model's trainable variables) are the ones trained; the optimizer must have been made for them. With
    `jit`, the model's reversible loops are unrolled (`Network.unroll_loops`).
    """
    loss_scale = optimizer.loss_scale
    if jit and hasattr(model, "unroll_loops"):
        model.unroll_loops()   # XLA compiles convolution backprops inside while loops slowly (models/reversible.py)
    variables = list(model.trainable_variables if variables is None else variables)

    def forward_backward(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            per_example = cross_entropy(labels, logits, label_smoothing)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
            scaled_loss = loss * loss_scale.scale if loss_scale is not None else loss
        gradients = tape.gradient(scaled_loss, variables)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32))
        return loss, correct, gradients

    if jit:
        forward_backward = tf.function(forward_backward, jit_compile=True)

    def replica_step(images, labels, learning_rate):
        loss, correct, gradients = forward_backward(images, labels)
        optimizer.apply_gradients(gradients, variables, learning_rate)
        return loss, correct

    def one_step(iterator):
        learning_rate = learning_rate_fn(step)
        images, labels = next(iterator)
        loss, correct = strategy.run(replica_step, args=(images, labels, learning_rate))
        step.assign_add(1)
        position.assign_add(global_batch_size)
        loss = strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
        correct = strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None)
        return loss, correct / global_batch_size

    if steps_per_call == 1:
        @tf.function
        def train_steps(iterator, num_steps):
            loss, accuracy = one_step(iterator)
            return loss, accuracy, tf.math.is_finite(loss)
        return train_steps

    @tf.function
    def train_steps(iterator, num_steps):
        # Keras' steps_per_execution: a graph loop over steps saves the per-call Python and dispatch cost.
        loss, accuracy, finite = tf.constant(0.0), tf.constant(0.0), tf.constant(True)
        for _ in tf.range(num_steps):
            loss, accuracy = one_step(iterator)
            finite = tf.logical_and(finite, tf.math.is_finite(loss))
        return loss, accuracy, finite

    return train_steps


def make_eval_step(model):
    """`eval_step(images, labels) -> (loss_sum, top1_count, top5_count, count)` for any batch size."""
    num_classes = model.config.num_classes
    top_k = min(5, num_classes)

    @tf.function(reduce_retracing=True)
    def eval_step(images, labels):
        logits = model(images, training=False)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        top1 = tf.math.in_top_k(labels, logits, 1)
        top5 = tf.math.in_top_k(labels, logits, top_k)
        count = tf.shape(labels)[0]
        return (tf.reduce_sum(tf.cast(losses, tf.float64)), tf.reduce_sum(tf.cast(top1, tf.int64)),
                tf.reduce_sum(tf.cast(top5, tf.int64)), count)

    return eval_step


def run_evaluation(eval_step, dataset) -> Dict:
    """Top-1, top-5 and mean loss over every example of `dataset` (each counted exactly once)."""
    loss_sum, top1, top5, count = 0.0, 0, 0, 0
    for images, labels in dataset:
        batch_loss, batch_top1, batch_top5, batch_count = eval_step(images, labels)
        loss_sum += float(batch_loss)
        top1 += int(batch_top1)
        top5 += int(batch_top5)
        count += int(batch_count)
    if count == 0:
        return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan"), "examples": 0}
    return {"top1": top1 / count, "top5": top5 / count, "loss": loss_sum / count, "examples": count}


def copy_weights(source_model, target_model) -> None:
    """Copy a (possibly distributed) model's variables into a plain one; replica-synced moving
    statistics are read in cross-replica context, which averages them over the replicas."""
    for target, source in zip(target_model.variables, source_model.variables, strict=True):
        target.assign(np.asarray(source.read_value()))
