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
from pathlib import Path

from edgeopt.core.errors import InputError
from edgeopt.core.files import make_temp_dir
from edgeopt.core.result import Progress, reporter
from edgeopt.runtimes.artifact import Artifact, load_artifact
from edgeopt.runtimes.native import artifact_arch


#: Name starts of the libraries a plugin needs that a bundle ships (the rest: libc, libstdc++ and
#: TVM's, which the runner brings).
PLUGIN_LIBRARIES = ("libdnnl.", "libtbb.", "libimf.", "libintlc.")


def plugin_dependencies(art: Artifact) -> list[Path]:
    """The shared libraries the artifact's kernel plugins link beyond libc and TVM (found with
    ``ldd`` here). For the oneDNN plugin: ``libdnnl.so.3``, its CPU runtime ``libtbb.so.12`` and
    the Intel compiler runtime it was built with (``libimf.so``, ``libintlc.so.5``), the pip
    packages of requirements/onednn.txt, which a device does not have."""
    import subprocess

    found: dict[str, Path] = {}
    for name in art.manifest.get("plugins", []):
        r = subprocess.run(["ldd", str(art.path / name)], capture_output=True, text=True)
        for line in r.stdout.splitlines():
            parts = line.split("=>")
            if len(parts) == 2 and parts[1].strip().startswith("/"):
                lib = Path(parts[1].split("(")[0].strip())
                if lib.name.startswith(PLUGIN_LIBRARIES):
                    found[lib.name] = lib
    return sorted(found.values())


def make_bundle(artifact: str | os.PathLike | Artifact, out: str | os.PathLike, progress: Progress = None) -> Path:
    """Write ``out``: ``model/`` (the artifact), ``edgeopt-run``, ``lib/`` and ``README.txt``.

    The runner and libraries are for the artifact's CPU (this host's, or aarch64). Written into a
    temporary sibling folder and renamed into place, so a failure leaves nothing behind.
    """
    log = reporter(progress)
    from .native_build import runner_binary, runner_tvm_root, tvm_runtime_libs

    art = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
    target = art.manifest.get("target") or {}
    if art.format != "tvm" or target.get("kind") not in (None, "llvm"):
        raise InputError(f"a deployment bundle holds a TVM CPU artifact; {str(art.path)!r} is "
                         f"{art.format} for {target.get('kind', '?')} (build it with --target cpu or arm)")
    arch = artifact_arch(art)
    if arch == platform.machine():
        runner_arch = "host"
    elif arch == "aarch64":
        runner_arch = "aarch64"
    else:
        raise InputError(f"no native runner for {arch} artifacts (have: {platform.machine()}, aarch64)")
    binary = runner_binary(runner_arch, progress)
    tvm_root = runner_tvm_root(runner_arch)
    out = Path(out)
    if out.exists():
        raise InputError(f"{str(out)!r} already exists; choose a new bundle folder")
    tmp = make_temp_dir(out)
    try:
        shutil.copytree(art.path, tmp / "model")
        shutil.copy2(binary, tmp / "edgeopt-run")
        (tmp / "lib").mkdir()
        for lib in tvm_runtime_libs(tvm_root):
            shutil.copy2(lib, tmp / "lib" / lib.name)
        for lib in plugin_dependencies(art):  # e.g. libdnnl.so.3: the device need not install it
            shutil.copy2(lib, tmp / "lib" / lib.name)
        threads = target.get("num-cores") or 4
        (tmp / "README.txt").write_text(
            f"edgeopt deployment bundle for {arch} ({target.get('mcpu') or target.get('mtriple') or 'generic'}).\n"
            f"Copy this folder to the device and run:\n\n"
            f"    ./edgeopt-run model --threads {threads} --warmup 10 --repeat 100\n\n"
            f"Outputs: add --outputs DIR (one .npy per output); inputs: --input NAME=FILE.npy\n"
            f"(default: seeded random data shaped as model/manifest.json says).\n")
        if out.exists():  # created while this bundle was written: never replace it
            raise InputError(f"{str(out)!r} already exists; choose a new bundle folder")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out  # the caller reports it (the CLI with the command to run on the device)
