"""Checking a request's inputs against the deployed model's signature.

Done in the SDK before anything is sent (and again by the first agent), so a
wrong name, shape or dtype is a typed `InputError` that quotes the expected
signature, never an onnxruntime traceback from a remote process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edge_runtime.errors import InputError
from edge_runtime.protocol import TensorSpec


def describe(signature: tuple[TensorSpec, ...]) -> str:
    return ", ".join(spec.describe() for spec in signature)


def check_inputs(
    signature: tuple[TensorSpec, ...], inputs: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """The inputs as numpy arrays, or `InputError` listing every mismatch and the signature."""
    if type(inputs) is dict and len(inputs) == len(signature):
        # the usual case, checked in one pass: exactly the signature's names, each an
        # array that fits (anything else takes the full check below, which says why)
        arrays: dict[str, np.ndarray] = {}
        for spec in signature:
            value = inputs.get(spec.name)
            if type(value) is not np.ndarray or not spec.accepts(value):
                break
            arrays[spec.name] = value
        else:
            return arrays
    if not isinstance(inputs, Mapping):
        raise InputError(
            f"inputs must be a dict of name -> numpy array, got {type(inputs).__name__}; "
            f"expected {describe(signature)}"
        )
    expected = {spec.name for spec in signature}
    problems: list[str] = []
    missing = sorted(expected - inputs.keys())
    extra = sorted(str(k) for k in inputs.keys() - expected)
    if missing:
        problems.append(f"missing {missing}")
    if extra:
        problems.append(f"unexpected {extra}")
    arrays = {}
    for spec in signature:
        if spec.name not in inputs:
            continue
        value = inputs[spec.name]
        if not isinstance(value, np.ndarray):
            problems.append(f"{spec.name} is a {type(value).__name__}, not a numpy array")
            continue
        if not spec.accepts(value):
            problems.append(f"{spec.name} is {value.dtype}[{', '.join(map(str, value.shape))}]")
            continue
        arrays[spec.name] = value
    if problems:
        raise InputError(
            f"inputs do not match the model: {'; '.join(problems)}. Expected {describe(signature)}"
        )
    return arrays
