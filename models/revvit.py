"""RevViT: a reversible Vision Transformer (Mangalam et al., CVPR 2022) on the public ReversibleSequence layer.

    images -> input normalisation -> patch embedding (conv, stride = patch) + position embedding  [stem]
           -> tokens split in two streams along the channels (x1, x2)
           -> blocks  y1 = x1 + f(x2),  y2 = x2 + g(y1)                                           [stage1]
              f = LayerNorm -> multi-head self-attention,  g = LayerNorm -> MLP (GELU)
           -> concat(y1, y2) -> LayerNorm -> mean over tokens -> dense logits                     [head]

The blocks are one `revnet.reversible.ReversibleSequence` (additive coupling). The config's `mode` is the
sequence's mode, so `mode="autodiff"` builds the same network (same variables, same weights for the same seed)
with plain autodiff: the reference of the gradient-parity tests and the memory benchmark. Inference (`training=
False`) runs the blocks through a second ReversibleSequence over the same f and g layers in "autodiff" mode:
no custom gradient is traced, which is what the SavedModel and ONNX exports want.

The network is a `tf.Module` holding Keras layers and meets the contract the trainer, evaluator, exporter and
benchmarks use (`Network`): `model(images, training)` maps raw 0..255 RGB to float32 logits, `variables`,
`trainable_variables`, `trained_variables`, `decay_variables`, `classifier_variables`, `freeze` (parts stem,
stage1, head) and `count_params`. Every weight is created in the constructor, seeded from the config's seed.
Config fields: `channels_per_stage[0]` the embedding width of both streams together, `units_per_stage[0]` the
number of blocks, `num_heads` the attention heads per stream, `patch_size`; `mlp_ratio` is 4.
"""
from __future__ import annotations

from typing import List

import keras
import numpy as np
import tensorflow as tf

from revnet.models.normalization import normalization_constants, normalize
from revnet.models.parts import frozen_sets
from revnet.reversible import ReversibleSequence

MLP_RATIO = 4
LAYER_NORM_EPSILON = 1e-6
POSITION_STDDEV = 0.02


class _Seeds:
    """Distinct integer seeds for the initializers, derived from the config's seed."""

    def __init__(self, seed: int):
        self.seed, self.counter = int(seed), 0

    def __call__(self) -> int:
        self.counter += 1
        return (self.seed * 100_003 + self.counter) % (2 ** 31 - 1)


def gelu(x):
    """Exact GELU, x * Phi(x), written with erf: TensorFlow's own (tf.nn.gelu, Keras' "gelu") uses Erfc, which
    tf2onnx cannot convert; erf converts to ONNX Erf."""
    return 0.5 * x * (1.0 + tf.math.erf(x * tf.cast(2.0 ** -0.5, x.dtype)))


def _glorot(seeds: _Seeds):
    return keras.initializers.GlorotUniform(seed=seeds())


@keras.saving.register_keras_serializable(package="revnet_revvit")
class PatchEmbedding(keras.layers.Layer):
    """Non-overlapping patches -> `dim` features each (a conv of kernel = stride = `patch_size`), plus a learned
    position embedding: [batch, H, W, 3] -> [batch, tokens, dim]."""

    def __init__(self, dim: int, patch_size: int, num_tokens: int, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.patch_size, self.num_tokens, self.seed = dim, patch_size, num_tokens, seed
        seeds = _Seeds(seed)
        self.projection = keras.layers.Conv2D(dim, patch_size, strides=patch_size, kernel_initializer=_glorot(seeds),
                                              dtype=self.dtype_policy, name="projection")
        self.position = self.add_weight(shape=(num_tokens, dim), name="position", initializer=keras.initializers.
                                        TruncatedNormal(stddev=POSITION_STDDEV, seed=seeds()))

    def build(self, input_shape):
        self.projection.build(input_shape)

    def call(self, images):
        x = self.projection(images)
        x = tf.reshape(x, [-1, self.num_tokens, self.dim])
        return x + tf.cast(self.position, x.dtype)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "patch_size": self.patch_size,
                "num_tokens": self.num_tokens, "seed": self.seed}


@keras.saving.register_keras_serializable(package="revnet_revvit")
class AttentionBranch(keras.layers.Layer):
    """f: LayerNorm -> multi-head self-attention over the tokens of one stream ([batch, tokens, dim])."""

    def __init__(self, dim: int, num_heads: int, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.seed = dim, num_heads, seed
        self.norm = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, dtype=self.dtype_policy, name="norm")
        # MultiHeadAttention clones one initializer for its query, key, value and output kernels, so a seeded
        # initializer would make them equal; `build` gives each its own seed. No biases: the key's would get no
        # gradient at all (the softmax over the keys ignores a shift shared by all of them), and Keras has no
        # switch for the key alone.
        self.attention = keras.layers.MultiHeadAttention(num_heads, dim // num_heads, use_bias=False,
                                                         dtype=self.dtype_policy, name="attention")

    def build(self, input_shape):
        self.norm.build(input_shape)
        self.attention.build(input_shape, input_shape)
        seeds = _Seeds(self.seed)
        for dense in (self.attention.query_dense, self.attention.key_dense, self.attention.value_dense,
                      self.attention.output_dense):
            dense.kernel.assign(_glorot(seeds)(dense.kernel.shape, dtype=dense.kernel.dtype))

    def call(self, x, training=None):
        h = self.norm(x)
        return self.attention(h, h, training=training)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads, "seed": self.seed}


@keras.saving.register_keras_serializable(package="revnet_revvit")
class MLPBranch(keras.layers.Layer):
    """g: LayerNorm -> dense (`MLP_RATIO` x dim) -> GELU -> dense (dim)."""

    def __init__(self, dim: int, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.seed = dim, seed
        seeds = _Seeds(seed)
        self.norm = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, dtype=self.dtype_policy, name="norm")
        self.hidden = keras.layers.Dense(MLP_RATIO * dim, kernel_initializer=_glorot(seeds),
                                         dtype=self.dtype_policy, name="hidden")
        self.out = keras.layers.Dense(dim, kernel_initializer=_glorot(seeds), dtype=self.dtype_policy, name="out")

    def build(self, input_shape):
        self.norm.build(input_shape)
        self.hidden.build(input_shape)
        self.out.build(tuple(input_shape[:-1]) + (MLP_RATIO * self.dim,))

    def call(self, x, training=None):
        return self.out(gelu(self.hidden(self.norm(x))))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "seed": self.seed}


class _Part(tf.Module):
    """The Keras layers of one part (stem, stage1, head): its variables, for trained_variables and --freeze."""

    def __init__(self, name: str, layers: List[keras.layers.Layer]):
        super().__init__(name=name)
        self.part = name
        self.layers = layers

    @property
    def keras_variables(self):
        seen, found = set(), []
        for layer in self.layers:
            for variable in layer.weights:
                if id(variable) not in seen:
                    seen.add(id(variable))
                    found.append(variable)
        return found


def _tf(variable) -> tf.Variable:
    """The tf.Variable behind a Keras variable (what tapes, optimizers and checkpoints see)."""
    return getattr(variable, "value", variable)


class RevViT(tf.Module):
    """`model(images, training)`: raw 0..255 RGB [batch, S, S, 3] -> float32 logits [batch, num_classes]."""

    def __init__(self, config):
        super().__init__(name=config.name.replace("-", "_"))
        self.config = config
        self.param_dtype = tf.as_dtype(config.param_dtype)
        self.compute_dtype = self.param_dtype
        self.pixel_mean, self.pixel_std = normalization_constants(config, self.param_dtype)
        dim, half = config.channels_per_stage[0], config.channels_per_stage[0] // 2
        grid = config.input_size // config.patch_size
        self.num_tokens = grid * grid
        dtype = config.param_dtype
        seed = int(config.seed) * 1000
        self.embedding = PatchEmbedding(dim, config.patch_size, self.num_tokens, seed=seed, dtype=dtype,
                                        name="patch_embedding")
        blocks = [(AttentionBranch(half, config.num_heads, seed=seed + 2 * k + 1, dtype=dtype, name=f"block{k}_f"),
                   MLPBranch(half, seed=seed + 2 * k + 2, dtype=dtype, name=f"block{k}_g"))
                  for k in range(config.units_per_stage[0])]
        # tf.train.Checkpoint does not reach f and g through the Keras sequence layer (nor through keras.Sequential), so
        # the network tracks them itself: checkpoints name them model/branches/<2k> (f) and <2k+1> (g).
        self.branches = [layer for pair in blocks for layer in pair]
        self.blocks = ReversibleSequence(blocks, mode=config.mode, dtype=dtype, name="blocks")
        self.inference_blocks = ReversibleSequence(blocks, mode="autodiff", dtype=dtype, name="inference_blocks")
        head_seeds = _Seeds(seed + 999)
        self.head_norm = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, dtype=dtype, name="head_norm")
        self.classifier = keras.layers.Dense(config.num_classes, kernel_initializer=_glorot(head_seeds), dtype=dtype,
                                             name="classifier")
        self.parts = [_Part("stem", [self.embedding]), _Part("stage1", [self.blocks]),
                      _Part("head", [self.head_norm, self.classifier])]
        self.frozen = frozenset()
        self._frozen_prefix = frozenset()
        size = config.input_size
        self.embedding.build((None, size, size, 3))
        for f, g in blocks:
            f.build((None, self.num_tokens, half))
            g.build((None, self.num_tokens, half))
        self.blocks.build((None, self.num_tokens, dim))
        self.inference_blocks.build((None, self.num_tokens, dim))
        self.head_norm.build((None, dim))
        self.classifier.build((None, dim))

    # --- the call -------------------------------------------------------------------------------------
    def normalize(self, images):
        """Raw 0..255 RGB to the network's input scale (the config's input_normalization), in the parameter dtype."""
        return normalize(images, self.config.input_normalization, self.pixel_mean, self.pixel_std, self.param_dtype)

    def __call__(self, images, training: bool = False):
        return self.logits_from_input(self.normalize(images), training)

    def logits_from_input(self, x, training: bool = False):
        """The network after the input normalisation: normalised images (parameter dtype) -> float32 logits."""
        x = self._after("stem", self.embedding(x, training=self._training("stem", training)))
        blocks = self.blocks if training else self.inference_blocks
        x = self._after("stage1", blocks(x, training=self._training("stage1", training)))
        x = tf.reduce_mean(self.head_norm(x), axis=1)
        return tf.cast(self.classifier(x), tf.float32)

    def reconstruction_errors(self, images) -> List[float]:
        """||x_rec - x|| / ||x|| of the blocks' input rebuilt from their output by the sequence's inverse."""
        x = self.embedding(self.normalize(images))
        rebuilt = self.blocks.inverse(self.blocks(x, training=False))
        truth, rebuilt = np.asarray(x, np.float64), np.asarray(rebuilt, np.float64)
        return [float(np.linalg.norm(rebuilt - truth) / max(np.linalg.norm(truth), 1e-300))]

    # --- freezing (models/parts.py) -------------------------------------------------------------------
    def freeze(self, parts) -> None:
        """Frozen parts run in inference mode and `trained_variables` leaves their weights out; what only a
        frozen prefix feeds is cut from the backward pass."""
        self.frozen, self._frozen_prefix = frozen_sets(self.config, parts)

    def _training(self, part: str, training: bool) -> bool:
        return bool(training) and part not in self.frozen

    def _after(self, part: str, x):
        return tf.stop_gradient(x) if part in self._frozen_prefix else x

    # --- variables ------------------------------------------------------------------------------------
    def _keras_variables(self, parts=None):
        return [v for part in self.parts if parts is None or part.part in parts for v in part.keras_variables]

    @property
    def variables(self):
        """Every variable, in a fixed order (stem, blocks, head): copy_weights and the numerics zip on it."""
        return tuple(_tf(v) for v in self._keras_variables())

    @property
    def trainable_variables(self):
        return tuple(_tf(v) for v in self._keras_variables() if v.trainable)

    @property
    def trained_variables(self) -> List[tf.Variable]:
        """The trainable variables outside the frozen parts: what the optimizer updates."""
        live = [part.part for part in self.parts if part.part not in self.frozen]
        return [_tf(v) for v in self._keras_variables(live) if v.trainable]

    @property
    def classifier_variables(self) -> List[tf.Variable]:
        return [_tf(self.classifier.kernel), _tf(self.classifier.bias)]

    @property
    def decay_variables(self) -> List[tf.Variable]:
        """L2 weight decay on the kernels (patch projection, attention and MLP, classifier), as for the conv nets;
        not on biases, LayerNorm scales and offsets or the position embedding."""
        return [_tf(v) for v in self._keras_variables() if v.trainable and v.path.endswith("kernel")]

    def count_params(self) -> int:
        return int(sum(v.shape.num_elements() for v in self.trainable_variables))

    def unroll_loops(self) -> None:
        """The blocks have no graph loop (the sequence is unrolled in Python): nothing to do for --jit."""
