"""The plain Keras model a TensorFlow user would write for the `benchmark train` comparison: the same
pre-activation CIFAR ResNet as `models/resnet.py` (3x3 stem, basic units, average-pool + zero-pad
shortcuts, BN epsilon 1e-3, L2 weight decay on kernels, momentum SGD), built from stock Keras layers
and trained with `model.fit`.
"""
from __future__ import annotations


def build_keras_resnet(config, weight_decay: float = 2e-4):
    """A keras.Model for a registry ResNet config with basic blocks (resnet-32, resnet-110)."""
    import keras
    from keras import layers

    from revnet.models.normalization import PIXEL_STATS

    if config.architecture != "resnet" or config.block != "basic" or config.input_normalization != "standardize":
        raise ValueError(f"the Keras baseline covers the basic-block CIFAR ResNets with per-channel "
                         f"standardisation, not {config.name} ({config.input_normalization})")
    # Our optimizer adds weight_decay * w to each kernel's gradient: an L2 penalty of weight_decay / 2.
    regularizer = keras.regularizers.L2(weight_decay / 2)

    def conv(channels, stride):
        return layers.Conv2D(channels, 3, strides=stride, padding="same", use_bias=False,
                             kernel_initializer="he_normal", kernel_regularizer=regularizer)

    def bn_relu(x):
        return layers.ReLU()(layers.BatchNormalization(epsilon=1e-3, momentum=config.bn_momentum)(x))

    class ZeroPadChannels(layers.Layer):
        def __init__(self, extra, **kwargs):
            super().__init__(**kwargs)
            self.extra = extra

        def call(self, x):
            return keras.ops.pad(x, [[0, 0], [0, 0], [0, 0], [self.extra // 2, self.extra - self.extra // 2]])

    mean, std = PIXEL_STATS[config.family]
    inputs = keras.Input((config.input_size, config.input_size, 3))
    x = layers.Normalization(mean=[255.0 * m for m in mean], variance=[(255.0 * s) ** 2 for s in std])(inputs)
    x = bn_relu(conv(config.stem_channels, 1)(x))
    channels = config.stem_channels
    for stage, (units, width, stride) in enumerate(zip(config.units_per_stage, config.channels_per_stage,
                                                       config.strides, strict=True)):
        for unit in range(units):
            unit_stride = stride if unit == 0 else 1
            y = x if stage == 0 and unit == 0 else bn_relu(x)
            y = conv(width, unit_stride)(y)
            y = conv(width, 1)(bn_relu(y))
            shortcut = x
            if unit_stride > 1:
                shortcut = layers.AveragePooling2D(unit_stride, unit_stride)(shortcut)
            if width > channels:
                shortcut = ZeroPadChannels(width - channels)(shortcut)
            x = layers.Add()([y, shortcut])
            channels = width
    x = layers.GlobalAveragePooling2D()(bn_relu(x))
    outputs = layers.Dense(config.num_classes, kernel_regularizer=regularizer)(x)
    return keras.Model(inputs, outputs, name=f"keras-{config.name}")
