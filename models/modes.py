"""How a training step keeps what back-propagation needs (a TF-free module: the configs and the CLI read it).

"reversible": RevNet stacks rebuild their activations in the backward pass and every other unit is
recomputed from its stored input (a ResNet has no reversible blocks and runs as "autodiff");
"autodiff": everything is stored; "recompute": every unit under tf.recompute_grad (stores each unit's
input), the usual alternative.
"""
MODES = ("reversible", "autodiff", "recompute")
