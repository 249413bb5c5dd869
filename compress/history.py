"""Step records that travel with a compressed torch model.

Each torch-level step (lowrank, prune, distill) returns a new module carrying the records of the
steps that made it, so that ``export`` can write the whole history into the artifact manifest.

Example:
    >>> import torch
    >>> from edgeopt.compress.history import with_record, history
    >>> m = with_record(torch.nn.Linear(2, 2), {"name": "demo", "config": {}, "metrics": {}})
    >>> [r["name"] for r in history(m)]
    ['demo']
"""

from __future__ import annotations

ATTR = "edgeopt_history"


def history(model) -> list[dict]:
    """The records of the steps that produced ``model`` (oldest first)."""
    return list(getattr(model, ATTR, []))


def with_record(model, record: dict, previous=None):
    """Attach ``record`` after the history of ``previous`` (default: ``model``'s own)."""
    base = history(previous if previous is not None else model)
    object.__setattr__(model, ATTR, [*base, record])
    return model


def last_record(model) -> dict:
    """The record of the step that produced ``model``."""
    h = history(model)
    if not h:
        raise ValueError("this model carries no edgeopt step record")
    return h[-1]
