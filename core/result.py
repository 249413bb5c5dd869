"""The one contract every step follows: ``step(input, config, data, ...) -> StepResult``.

A step (lowrank, prune, distill, quantize, export, build, ...) takes its input first (a torch
module, an ONNX file, an artifact folder, or the ``StepResult`` of the step before), its frozen
config second, the data it reads third where it reads any, and keyword options after that; it
returns a ``StepResult`` holding the output and the step's record. The record is appended to the
input's history, so chaining steps carries the whole history into the final artifact's manifest
without the caller passing it along.

``progress`` is the same argument everywhere: ``None``/``False`` (silent), ``True`` (lines on
stderr and progress bars), or a callable that receives each line.

Example:
    >>> from edgeopt.core.result import StepResult
    >>> r = StepResult(output="model", record={"name": "prune", "config": {}, "metrics": {"x": 1}})
    >>> r.history[-1]["name"], r.metrics
    ('prune', {'x': 1})
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Union, runtime_checkable

Progress = Union[None, bool, Callable[[str], None]]


@runtime_checkable
class ArtifactLike(Protocol):
    """What a written artifact offers a step's caller (``edgeopt.runtimes.artifact.Artifact`` is
    one): its folder, its manifest and the model file a runtime loads. ``core`` imports nothing
    of edgeopt, so ``StepResult`` recognizes an artifact by this shape, not by its class.

    Example:
        >>> from pathlib import Path
        >>> class Folder:
        ...     path, manifest, model_file = Path("a"), {}, Path("a/model.onnx")
        >>> isinstance(Folder(), ArtifactLike), isinstance(Path("a"), ArtifactLike)
        (True, False)
    """

    path: Path
    manifest: dict
    model_file: Path


@dataclass
class StepResult:
    """The output of one step and the records that made it.

    Attributes:
        output: a ``torch.nn.Module`` for torch-level steps (lowrank, prune, distill), an
            ``Artifact`` for steps that write one (export, quantize, build), or a ``Path`` when
            the step wrote a bare file.
        record: this step's record: ``{"name", "config", "metrics"}``.
        history: every record from the original model to this step (this one last).
    """

    output: Any
    record: dict
    history: list = field(default_factory=list)

    def __post_init__(self):
        if not self.history or self.history[-1] is not self.record:
            self.history = [*self.history, self.record]

    @property
    def metrics(self) -> dict:
        return self.record.get("metrics", {})

    @property
    def artifact(self):
        """The output as an ``Artifact`` (``None`` for a module or a bare file)."""
        return self.output if isinstance(self.output, ArtifactLike) else None

    @property
    def path(self) -> Path | None:
        """The model file written by the step (``None`` for a torch module)."""
        if self.artifact is not None:
            return self.artifact.model_file
        return self.output if isinstance(self.output, Path) else None


def unwrap(value: Any) -> tuple[Any, list]:
    """``(output, history)`` of a step input: a ``StepResult`` gives both; anything else gives
    itself and the history it carries (an artifact's manifest, a module's attached records)."""
    if isinstance(value, StepResult):
        return value.output, list(value.history)
    history = getattr(value, "history", None)
    if isinstance(history, list):
        return value, list(history)
    return value, list(getattr(value, "edgeopt_history", []) or [])


def reporter(progress: Progress) -> Callable[[str], None]:
    """The callable behind a ``progress`` argument (see the module docstring)."""
    if progress is None or progress is False:
        return lambda line: None
    if progress is True:
        return lambda line: print(line, file=sys.stderr, flush=True)
    if callable(progress):
        return progress
    from .errors import InputError

    raise InputError(f"progress must be None, True/False or a callable taking a line, got {progress!r}")


def shows_bars(progress: Progress) -> bool:
    """Whether a step should draw progress bars (tqdm): any progress but ``None``/``False``."""
    return progress is not None and progress is not False
