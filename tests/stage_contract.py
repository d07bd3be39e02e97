"""The stage contract of stages/base.py, checked the same way for every stage."""

from __future__ import annotations

import numpy as np

from magma_data.stages.base import Column, Stage


def assert_stage_contract(stage: Stage, output: dict) -> None:
    """``output`` (what ``stage`` returned for a real window) holds exactly the declared columns, each
    of its declared type and rank; and a failed row's placeholders match it, so Ray can keep failed
    and healthy rows in one batch."""
    declared = {column.name: column for column in stage.columns}
    assert output.keys() == declared.keys(), (
        f"{stage.name} returns undeclared {sorted(output.keys() - declared.keys())}, "
        f"omits declared {sorted(declared.keys() - output.keys())}")
    for name, value in output.items():
        assert_value_fits(declared[name], value)
    assert_placeholders_match(output, stage.placeholders())


def assert_value_fits(column: Column, value) -> None:
    if column.dtype == "turn":
        assert isinstance(value, list) and all(turn.keys() == {"from", "value"} for turn in value), column.name
    elif column.ragged:
        assert isinstance(value, list), column.name
        assert all(np.ndim(item) == len(column.shape) - 1 for item in value), column.name
    elif column.dtype == "image":
        assert isinstance(value, bytes), column.name
    elif column.dtype == "string":
        assert isinstance(value, str), column.name
    else:
        array = np.asarray(value)
        assert array.dtype == np.dtype(column.dtype) and array.ndim == len(column.shape), (column.name, array.dtype)
        for size, declared in zip(array.shape, column.shape):
            assert size == declared or not isinstance(declared, int), (column.name, array.shape, column.shape)
        if not column.shape:
            assert isinstance(value, np.generic), f"{column.name}: a NumPy scalar, as its placeholder is"


def assert_placeholders_match(output: dict, empty: dict) -> None:
    """A failed row's placeholders have the columns, dtypes and ranks of a real output."""
    assert output.keys() == empty.keys()
    for key, value in output.items():
        if isinstance(value, np.ndarray):
            assert isinstance(empty[key], np.ndarray), key
            assert empty[key].dtype == value.dtype and empty[key].ndim == value.ndim, key
        else:
            assert type(empty[key]) is type(value), key
