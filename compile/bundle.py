"""Deployment bundle: an artifact plus the native runner and the TVM runtime libraries it needs.

Copy the folder to a board and run ``./edgeopt-run model`` there: no Python, no TVM install.
The runner finds its libraries in ``lib/`` through its RPATH (``$ORIGIN/lib``).

Example:
    >>> from edgeopt.compile.bundle import make_bundle  # doctest: +SKIP
    >>> make_bundle("build/r18-arm", "build/r18-arm-bundle")  # doctest: +SKIP
    PosixPath('build/r18-arm-bundle')
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from pathlib import Path

from edgeopt.runtimes.artifact import Artifact, load_artifact
from edgeopt.core.errors import InputError


def make_bundle(artifact: str | os.PathLike | Artifact, out: str | os.PathLike, log=lambda s: None) -> Path:
    """Write ``out``: ``model/`` (the artifact), ``edgeopt-run``, ``lib/`` and ``README.txt``.

    The runner and libraries are for the artifact's CPU (this host's, or aarch64). Written into a
    temporary sibling folder and renamed into place, so a failure leaves nothing behind.
    """
    from edgeopt.runtimes.native import aarch64_tvm_root, artifact_arch, host_tvm_root, runner_binary

    art = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
    target = art.manifest.get("target") or {}
    if art.format != "tvm" or target.get("kind") not in (None, "llvm"):
        raise InputError(f"a deployment bundle holds a TVM CPU artifact; {str(art.path)!r} is "
                         f"{art.format} for {target.get('kind', '?')} (build it with --target cpu or arm)")
    arch = artifact_arch(art)
    if arch == platform.machine():
        runner_arch, tvm_root = "host", host_tvm_root()
    elif arch == "aarch64":
        runner_arch, tvm_root = "aarch64", aarch64_tvm_root()
    else:
        raise InputError(f"no native runner for {arch} artifacts (have: {platform.machine()}, aarch64)")
    binary = runner_binary(runner_arch, log=log)
    out = Path(out)
    if out.exists():
        raise InputError(f"{str(out)!r} already exists; choose a new bundle folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        shutil.copytree(art.path, tmp / "model")
        shutil.copy2(binary, tmp / "edgeopt-run")
        (tmp / "lib").mkdir()
        for lib in (tvm_root / "tvm" / "lib" / "libtvm_runtime.so", tvm_root / "tvm_ffi" / "lib" / "libtvm_ffi.so"):
            shutil.copy2(lib, tmp / "lib" / lib.name)
        threads = target.get("num-cores") or 4
        (tmp / "README.txt").write_text(
            f"edgeopt deployment bundle for {arch} ({target.get('mcpu') or target.get('mtriple') or 'generic'}).\n"
            f"Copy this folder to the device and run:\n\n"
            f"    ./edgeopt-run model --threads {threads} --warmup 10 --repeat 100\n\n"
            f"Outputs: add --outputs DIR (one .npy per output); inputs: --input NAME=FILE.npy\n"
            f"(default: seeded random data shaped as model/manifest.json says).\n")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote the deployment bundle {out}")
    return out
