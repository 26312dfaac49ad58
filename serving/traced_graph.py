"""The export graph of a network the conv folding does not know (a RevViT): its own inference call, traced.

`serving/inference_graph.py` rebuilds ResNets and RevNets as folded convolution programs. A RevViT has nothing to
fold (LayerNorm, attention and MLP run as they are), so its export serves `model(images, training=False)` itself:
the model's inference path runs its blocks through a plain (autodiff-mode) ReversibleSequence, so the traced
function holds no custom gradient. The SavedModel keeps the model's variables; tf2onnx freezes the captured
variables into constants (`serving/onnx_export.py`). Both layouts are the model's own NHWC graph (the layout
argument is accepted for the exporter's interface; tf2onnx adds the transposes around the patch convolution).
"""
from __future__ import annotations

import tensorflow as tf

from revnet.models.normalization import normalize


class TracedGraph(tf.Module):
    """`logits(images, layout)` = the model's own inference call; `weights` its variables (for export.json)."""

    def __init__(self, model):
        super().__init__(name="traced_graph")
        self.model = model
        self.weights = list(model.variables)
        self.input_size = model.config.input_size
        # The normalisation constants as variables: a captured eager constant would become a second ONNX input.
        self.pixel_mean, self.pixel_std = (None if value is None else tf.Variable(value, trainable=False, name=name)
                                           for value, name in ((model.pixel_mean, "pixel_mean"),
                                                               (model.pixel_std, "pixel_std")))

    def logits(self, images, layout: str = "NHWC"):
        model = self.model
        x = normalize(images, model.config.input_normalization, self.pixel_mean, self.pixel_std, model.param_dtype)
        return tf.cast(model.logits_from_input(x, training=False), tf.float32)


def export_graph(model):
    """The graph an export serves: the folded conv program for ResNets and RevNets, the traced call otherwise."""
    if getattr(model.config, "architecture", None) == "revvit":
        return TracedGraph(model)
    from revnet.serving.inference_graph import InferenceGraph

    return InferenceGraph(model)
