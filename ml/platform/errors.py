"""Errors shared across the layers: :class:`DataError`, an input the platform cannot use (a tweet file, a
snapshot, the external evaluation file, ``make up``'s training file), raised from ``ml.platform.startup`` up to
the stages. ``ml.data.DataError`` is this class."""


class DataError(ValueError):
    """The input cannot be used; the message says why."""
