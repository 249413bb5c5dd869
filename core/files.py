"""Files: one atomic-write helper, one cache root.

Every file edgeopt writes goes through ``atomic_file`` (or ``write_json_atomic`` /
``write_bytes_atomic`` built on it): the content goes to a temporary sibling that is renamed over
the destination only when complete, so an interrupted run never leaves a half-written file.
Files get the permissions the user's umask gives a new file (``tempfile`` would make them 0600,
which another user or a CI container could not read). Folders are written the same way by
``edgeopt.runtimes.artifact.write_artifact``, which uses ``make_temp_dir``.

Every cache (tuning databases, the native runner's builds, the CUDA driver stand-in) lives under
``cache_root()``: ``$XDG_CACHE_HOME/edgeopt`` or ``~/.cache/edgeopt``.

Example:
    >>> import json, pathlib, tempfile
    >>> from edgeopt.core.files import write_json_atomic
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "state.json"
    >>> write_json_atomic(p, {"done": 1})
    >>> json.loads(p.read_text())
    {'done': 1}
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def cache_root(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/edgeopt/<parts>`` (default ``~/.cache/edgeopt/<parts>``); not created."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base.joinpath("edgeopt", *parts)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets under the current umask (0644 under the usual 022)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode a new folder gets under the current umask (0755 under the usual 022)."""
    return 0o777 & ~_umask()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``.

    ``suffix`` keeps the extension for writers that check it (``.png``, ``.pt``). On an
    exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON (and a final newline), atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def make_temp_dir(beside: str | os.PathLike) -> Path:
    """A hidden temporary folder next to ``beside`` (same file system: renames are atomic),
    with the umask's permissions instead of ``tempfile``'s 0700."""
    beside = Path(beside)
    beside.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{beside.name}.tmp-", dir=beside.parent))
    os.chmod(tmp, dir_mode())
    return tmp
