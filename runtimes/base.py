"""The common runner interface: ``run(inputs)`` and ``benchmark(inputs, warmup, repeat)``.

Every backend (torch eager, onnxruntime, TVM VM) subclasses ``Runner`` and implements two
hooks: ``_bind`` turns validated numpy inputs into the backend's own input objects (outside the
timed loop) and ``_call`` runs the model once on them. Input checking, output conversion and
timing live here once.

Example:
    >>> import numpy as np
    >>> from edgeopt.runtimes.base import example_inputs
    >>> from edgeopt.core.tensors import TensorSpec
    >>> [a.shape for a in example_inputs([TensorSpec("x", ["batch", 3], "float32")])]
    [(1, 3)]
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from edgeopt.core.tensors import TensorSpec
from edgeopt.core.errors import InputError
from .fingerprint import machine_fingerprint
from .timing import TimingStats, check_counts, measure


@dataclass(frozen=True)
class BenchmarkResult:
    """Latency of one runner on one input set, with the machine it was measured on."""

    runtime: str
    latency: TimingStats
    machine: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"runtime": self.runtime, "latency_ms": self.latency.to_report(),
                "machine": self.machine}


def example_inputs(specs: Sequence[TensorSpec], seed: int = 0, batch: int = 1) -> list[np.ndarray]:
    """Seeded random inputs that match ``specs``; symbolic dimensions become ``batch``."""
    rng = np.random.default_rng(seed)
    out = []
    for s in specs:
        shape = tuple(d if isinstance(d, int) else batch for d in s.shape)
        dt = np.dtype(s.dtype)
        if dt.kind == "f":
            out.append(rng.standard_normal(shape).astype(dt))
        elif dt.kind in "iu":
            out.append(rng.integers(0, 10, size=shape).astype(dt))
        elif dt.kind == "b":
            out.append(rng.integers(0, 2, size=shape).astype(dt))
        else:
            raise InputError(f"cannot make example data for input {s.name!r} of dtype {s.dtype!r}")
    return out


class Runner(abc.ABC):
    """Base class: validated inputs in, list of numpy outputs out.

    Subclasses set ``runtime`` and ``inputs``/``outputs`` (lists of ``TensorSpec``) and
    implement ``_bind(arrays) -> Any`` and ``_call(bound) -> sequence of outputs``.
    """

    runtime: str = "?"

    def __init__(self, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                 threads: int | None = None):
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.threads = threads

    # -- hooks -----------------------------------------------------------------------------
    @abc.abstractmethod
    def _bind(self, arrays: list[np.ndarray]) -> Any:
        """Convert validated numpy inputs to what ``_call`` takes (done once per benchmark)."""

    @abc.abstractmethod
    def _call(self, bound: Any) -> Sequence[Any]:
        """Run the model once on bound inputs; return its outputs in the backend's type."""

    def _to_numpy(self, value: Any) -> np.ndarray:
        return np.asarray(value)

    # -- public API ------------------------------------------------------------------------
    def prepare(self, inputs: Any) -> list[np.ndarray]:
        """Check ``inputs`` against the model's io spec and return them in input order.

        ``inputs`` is one array (single-input models), a sequence of arrays in input order,
        or a mapping from input name to array.
        """
        if isinstance(inputs, Mapping):
            names = [s.name for s in self.inputs]
            unknown = sorted(set(inputs) - set(names))
            missing = [n for n in names if n not in inputs]
            if unknown or missing:
                raise InputError(
                    f"inputs {sorted(inputs)} do not match the model's inputs {names}"
                    + (f"; unknown: {unknown}" if unknown else "")
                    + (f"; missing: {missing}" if missing else ""))
            arrays = [inputs[n] for n in names]
        elif isinstance(inputs, np.ndarray) or not isinstance(inputs, Sequence):
            arrays = [inputs]
        else:
            arrays = list(inputs)
        if len(arrays) != len(self.inputs):
            raise InputError(f"the model takes {len(self.inputs)} input(s) "
                             f"{[s.name for s in self.inputs]}, got {len(arrays)}")
        out = []
        for spec, a in zip(self.inputs, arrays):
            a = np.asarray(a)
            check_array(spec, a)
            # order="C", not ascontiguousarray: that makes a 0-d input (a scalar sample rate) 1-d,
            # which TVM's VM refuses for a scalar parameter
            out.append(np.asarray(a, order="C"))
        return out

    def run(self, inputs: Any) -> list[np.ndarray]:
        """Run the model once and return its outputs as numpy arrays."""
        bound = self._bind(self.prepare(inputs))
        return [self._to_numpy(o) for o in self._call(bound)]

    def benchmark(self, inputs: Any, warmup: int = 10, repeat: int = 100) -> BenchmarkResult:
        """Time ``repeat`` runs after ``warmup`` untimed ones; inputs are bound once, outside."""
        check_counts(warmup, repeat)
        bound = self._bind(self.prepare(inputs))
        stats = measure(lambda: self._call(bound), warmup=warmup, repeat=repeat)
        return BenchmarkResult(self.runtime, stats, machine_fingerprint(self.threads))


def check_array(spec: TensorSpec, a: np.ndarray) -> None:
    """Raise ``InputError`` when ``a`` does not fit ``spec`` (dtype, rank, fixed dimensions)."""
    expected = tuple(spec.shape)
    if a.dtype != np.dtype(spec.dtype):
        raise InputError(f"input {spec.name!r} has dtype {a.dtype}; the model expects {spec.dtype}")
    ok = a.ndim == len(expected) and all(
        (not isinstance(d, int)) or d == n for d, n in zip(expected, a.shape))
    if not ok:
        raise InputError(f"input {spec.name!r} has shape {tuple(a.shape)}; "
                         f"the model expects {expected}")
