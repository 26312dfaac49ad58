"""Couplings of a reversible block: how one half x of its input is combined with fx, f (or g) of the other half.

A coupling is invertible in x for any fx: forward(x, fx) -> y and inverse(y, fx) -> x. ReversibleSequence runs
every coupling through the same code path: additive and affine are Coupling instances like a user's own.
"""
from __future__ import annotations

import tensorflow as tf
import keras


class Coupling:
    """Base class: subclass it with `forward(x, fx)` and its exact inverse `inverse(y, fx)`.

    For a `.keras` file to load a sequence using it, register the subclass with
    `@keras.saving.register_keras_serializable(package=...)` and return its constructor arguments from `get_config`.
    """

    def forward(self, x, fx):
        raise NotImplementedError(f"{type(self).__name__} must define forward(x, fx)")

    def inverse(self, y, fx):
        raise NotImplementedError(f"{type(self).__name__} must define inverse(y, fx)")

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="revnet")
class AdditiveCoupling(Coupling):
    """y = x + fx; f keeps the shape of its input."""

    def forward(self, x, fx):
        return x + fx

    def inverse(self, y, fx):
        return y - fx


@keras.saving.register_keras_serializable(package="revnet")
class AffineCoupling(Coupling):
    """y = x * exp(s) + t, where fx is s and t concatenated along `axis`: f returns twice its input's size there.

    Nothing bounds s: a last activation such as tanh keeps exp(s) and its inverse well conditioned.
    """

    def __init__(self, axis: int = -1):
        self.axis = axis

    def _scale_shift(self, x, fx):
        if fx.shape[self.axis] is not None and x.shape[self.axis] is not None \
                and fx.shape[self.axis] != 2 * x.shape[self.axis]:
            raise ValueError(f"affine coupling: f and g must return twice their input's size along axis "
                             f"{self.axis} (s and t concatenated); got {fx.shape[self.axis]} for "
                             f"{x.shape[self.axis]}")
        return tf.split(fx, 2, axis=self.axis)

    def forward(self, x, fx):
        s, t = self._scale_shift(x, fx)
        return x * tf.exp(s) + t

    def inverse(self, y, fx):
        s, t = self._scale_shift(y, fx)
        return (y - t) * tf.exp(-s)

    def get_config(self) -> dict:
        return {"axis": self.axis}


COUPLINGS = ("additive", "affine")


def get_coupling(coupling, axis: int) -> Coupling:
    """A Coupling instance as given, or the one a name stands for ("affine" splits fx along `axis`)."""
    if isinstance(coupling, Coupling):
        return coupling
    if coupling == "additive":
        return AdditiveCoupling()
    if coupling == "affine":
        return AffineCoupling(axis)
    raise ValueError(f"unknown coupling {coupling!r}; expected one of {', '.join(map(repr, COUPLINGS))} "
                     f"or a Coupling instance")
