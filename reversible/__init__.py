"""Public reversible layers: a sequence of (f, g) coupling blocks whose backward pass rebuilds activations."""
from revnet.reversible.coupling import AdditiveCoupling, AffineCoupling, Coupling
from revnet.reversible.sequence import ReversibleSequence
from revnet.reversible.stacked import StackedReversibleSequence

__all__ = ["AdditiveCoupling", "AffineCoupling", "Coupling", "ReversibleSequence", "StackedReversibleSequence"]
