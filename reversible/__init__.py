"""Public reversible layers: a sequence of (f, g) coupling blocks whose backward pass rebuilds activations."""
from revnet.reversible.sequence import ReversibleSequence

__all__ = ["ReversibleSequence"]
