"""The stage contract of stages/base.py, checked the same way for every stage."""

from __future__ import annotations

import numpy as np


def assert_placeholders_match(output: dict, empty: dict) -> None:
    """A failed row's placeholders have the columns, dtypes and ranks of a real output, so Ray can
    keep failed and healthy rows in one batch."""
    assert output.keys() == empty.keys()
    for key, value in output.items():
        if isinstance(value, np.ndarray):
            assert isinstance(empty[key], np.ndarray), key
            assert empty[key].dtype == value.dtype and empty[key].ndim == value.ndim, key
        else:
            assert type(empty[key]) is type(value), key
