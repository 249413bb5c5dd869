"""Artifact folders: model file(s) plus ``manifest.json`` (standard library only).

An artifact is a folder written atomically: everything goes into a hidden temporary sibling
folder which is renamed into place at the end, so an interrupted run never leaves a
half-written artifact that loads. Loading validates the manifest and every file's sha256.

Example:
    >>> import tempfile, pathlib
    >>> from edgeopt.runtimes.artifact import write_artifact, load_manifest
    >>> from edgeopt.core.tensors import TensorSpec
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> def fill(tmp):
    ...     (tmp / "model.bin").write_bytes(b"weights")
    >>> art = write_artifact(d / "art", fill, format="onnx", files=["model.bin"],
    ...                      inputs=[TensorSpec("x", [1, 3], "float32")],
    ...                      outputs=[TensorSpec("y", [1, 2], "float32")])
    >>> load_manifest(art.path)["files"]
    ['model.bin']
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

from edgeopt.core.errors import InputError
from edgeopt.core.files import make_temp_dir, write_json_atomic
from edgeopt.core.tensors import TensorSpec

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
FORMATS = ("torch", "onnx", "tvm", "pte")  # pte: an ExecuTorch program


@dataclass
class Artifact:
    """A loaded, validated artifact folder."""

    path: Path
    manifest: dict = field(repr=False)

    @property
    def format(self) -> str:
        return self.manifest["format"]

    @property
    def files(self) -> list[Path]:
        return [self.path / f for f in self.manifest["files"]]

    @property
    def model_file(self) -> Path:
        """The first listed file: the one a runtime loads."""
        return self.files[0]

    @property
    def target_triple(self) -> str:
        """The LLVM triple the library was built for ("" when built for the host)."""
        target = self.manifest.get("target") or {}
        return target.get("mtriple") or (target.get("host") or {}).get("mtriple") or ""

    @property
    def cpu_features(self) -> list[str]:
        """The instruction-set features (LLVM names) the library needs of the CPU that runs it."""
        return list(self.manifest.get("cpu_features") or [])

    def check_cpu_features(self) -> None:
        """Raise ``InputError`` naming the features this library needs and this CPU lacks: it
        would die on an illegal instruction, or compute garbage in a lane it cannot execute."""
        from .cpu_features import missing_on_host

        missing = missing_on_host(self.cpu_features)
        if missing:
            raise InputError(
                f"artifact {str(self.path)!r} was built for a CPU with {', '.join(missing)}, which this "
                "CPU lacks (its flags in /proc/cpuinfo); rebuild it here with target 'cpu' "
                "(or 'cpu:generic' for any x86-64)")

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_dict(d) for d in self.manifest["io"]["inputs"]]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_dict(d) for d in self.manifest["io"]["outputs"]]

    @property
    def history(self) -> list[dict]:
        return list(self.manifest.get("history", []))

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def toolkit_version() -> str:
    try:
        return metadata.version("edgeopt")
    except metadata.PackageNotFoundError:  # running from a checkout that is not installed
        return "0+unknown"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_artifact(
    out: str | os.PathLike,
    fill: Callable[[Path], Any],
    *,
    format: str,
    files: Iterable[str],
    inputs: Iterable[TensorSpec],
    outputs: Iterable[TensorSpec],
    target: dict | None = None,
    history: Iterable[dict] = (),
    extra: dict | None = None,
) -> Artifact:
    """Write an artifact folder atomically and return it loaded.

    ``fill(tmp_dir)`` writes the model files into a temporary folder; the manifest is added,
    then the folder is renamed to ``out`` (an existing artifact at ``out`` is replaced only once
    the new one is complete). If ``fill`` raises, nothing is left behind.
    """
    if format not in FORMATS:
        raise InputError(f"artifact format must be one of {FORMATS}, got {format!r}")
    out = Path(out)
    tmp = make_temp_dir(out)
    try:
        fill(tmp)
        files = list(files)
        for f in files:
            if not (tmp / f).is_file():
                raise RuntimeError(f"artifact writer did not produce the listed file {f!r}")
        manifest = {
            "schema": SCHEMA_VERSION,
            "format": format,
            "files": files,
            "io": {
                "inputs": [t.to_dict() for t in inputs],
                "outputs": [t.to_dict() for t in outputs],
            },
            "target": target,
            "toolkit_version": toolkit_version(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "sha256": {f: sha256_file(tmp / f) for f in files},
            "history": list(history),
        }
        if extra:
            manifest.update(extra)
        write_json_atomic(tmp / MANIFEST, manifest)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_artifact(out)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder ``src`` to ``dst``, replacing an older ``dst`` last."""
    if dst.exists():
        if not (dst / MANIFEST).exists() and any(dst.iterdir()):
            raise InputError(
                f"output folder {str(dst)!r} exists and is not an edgeopt artifact; "
                "expected a new or empty folder, or an artifact to replace"
            )
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.rename(dst, old)
        os.rename(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(src, dst)


def load_manifest(path: str | os.PathLike) -> dict:
    """Return the validated manifest of the artifact folder at ``path``."""
    return load_artifact(path).manifest


def load_artifact(path: str | os.PathLike) -> Artifact:
    """Load and validate an artifact folder: manifest fields, listed files, checksums.

    Raises ``FileNotFoundError`` for a missing folder and ``InputError`` naming the field or
    file for anything else that does not match.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"artifact {str(path)!r} does not exist")
    mpath = path / MANIFEST
    if not path.is_dir() or not mpath.is_file():
        raise InputError(f"{str(path)!r} is not an artifact folder: expected a folder with {MANIFEST}")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{str(mpath)!r} is not valid JSON: {e}") from None
    _validate_manifest(manifest, mpath)
    for f in manifest["files"]:
        fpath = path / f
        if not fpath.is_file():
            raise InputError(f"artifact {str(path)!r}: file {f!r} listed in the manifest is missing")
        digest = sha256_file(fpath)
        if digest != manifest["sha256"].get(f):
            raise InputError(
                f"artifact {str(path)!r}: checksum of {f!r} does not match the manifest "
                f"(expected sha256 {manifest['sha256'].get(f)}, file has {digest}); "
                "the file was changed or truncated after the artifact was written"
            )
    return Artifact(path, manifest)


def _validate_manifest(m: Any, where: Path) -> None:
    def bad(msg: str) -> InputError:
        return InputError(f"{str(where)!r}: {msg}")

    if not isinstance(m, dict):
        raise bad(f"expected a JSON object, got {type(m).__name__}")
    if m.get("schema") != SCHEMA_VERSION:
        raise bad(f"manifest schema {m.get('schema')!r} is not supported; expected {SCHEMA_VERSION}")
    required = {"format": str, "files": list, "io": dict, "sha256": dict, "history": list,
                "toolkit_version": str, "created": str}
    for key, typ in required.items():
        if key not in m:
            raise bad(f"manifest field {key!r} is missing")
        if not isinstance(m[key], typ):
            raise bad(f"manifest field {key!r} must be a {typ.__name__}, got {type(m[key]).__name__}")
    features = m.get("cpu_features", [])
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise bad(f"manifest field 'cpu_features' must be a list of feature names, got {features!r}")
    if m["format"] not in FORMATS:
        raise bad(f"manifest field 'format' must be one of {FORMATS}, got {m['format']!r}")
    if not m["files"]:
        raise bad("manifest field 'files' is empty; expected at least the model file")
    for f in m["files"]:
        if not isinstance(f, str) or Path(f).is_absolute() or ".." in Path(f).parts:
            raise bad(f"manifest file entry {f!r} must be a relative path inside the artifact")
    for side in ("inputs", "outputs"):
        specs = m["io"].get(side)
        if not isinstance(specs, list):
            raise bad(f"manifest field 'io.{side}' must be a list")
        for s in specs:
            if not isinstance(s, dict) or not {"name", "shape", "dtype"} <= set(s):
                raise bad(f"manifest entry in 'io.{side}' needs name, shape and dtype, got {s!r}")


def model_input(value: Any, fmt: str, step: str) -> tuple[Path, list, "Artifact | None"]:
    """Resolve a step's input to ``(model file, history, artifact or None)``.

    ``value`` is a model file, an artifact folder (path or ``Artifact``), or a step result
    (anything with ``output`` and ``history``, e.g. ``edgeopt.core.result.StepResult``). An
    artifact's history travels with it, so every step that takes artifacts carries it on.

    Raises:
        FileNotFoundError: the path does not exist.
        InputError: the artifact holds another format than ``fmt``.
    """
    history: list = []
    if hasattr(value, "output") and hasattr(value, "history"):  # a StepResult
        history = list(value.history)
        value = value.output
    if not isinstance(value, Artifact):
        p = Path(value)
        if p.is_dir():
            value = load_artifact(p)
        elif not p.exists():
            raise FileNotFoundError(f"{fmt} model {str(p)!r} does not exist")
        else:
            return p, history, None
    if value.format != fmt:
        raise InputError(f"{step} needs an {fmt} model; {str(value.path)!r} is a {value.format} artifact")
    return value.model_file, history or value.history, value
