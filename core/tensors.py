"""``TensorSpec``: the name, shape and dtype of one model input or output.

Example:
    >>> from edgeopt.core.tensors import TensorSpec
    >>> TensorSpec.from_dict({"name": "x", "shape": ["batch", 3], "dtype": "float32"}).shape
    ['batch', 3]
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one model input or output.

    A dimension is an int, or a string naming a symbolic (dynamic) axis such as ``"batch"``.
    """

    name: str
    shape: list
    dtype: str

    @classmethod
    def from_dict(cls, d: dict) -> "TensorSpec":
        return cls(str(d["name"]), list(d["shape"]), str(d["dtype"]))

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
