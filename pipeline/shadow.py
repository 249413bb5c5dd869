"""Shadow comparison before rollout: a candidate model against the champion on logged inputs.

Both models (artifact folders, ``.onnx`` / ``.pt2`` files or torch MODEL specs, opened with
``edgeopt.pipeline.bench.open_runner``) run every logged input at batch 1. The log is read in
chunks (``.npy`` memory-mapped, ``.npz`` members streamed out of the zip, a folder of ``.npy``
files one file at a time), so a log larger than memory works and memory stays bounded by the
chunk size. Within a chunk the candidate runs every input, then the champion (one backend's
timed calls are never interleaved with the other's).

Reported (``shadow.json`` in ``out``, and returned): ``disagreement`` (fraction of inputs whose
top-1 differs; class-score outputs only), output drift as ``sqnr_db`` (10 log10 of the
champion's output energy over the energy of the difference) and ``kl_mean`` (mean KL divergence
of the candidate's softmax from the champion's), ``max_abs_diff``, the latency of both (median,
p90, mean in ms), and the disagreeing inputs: ``disagreements.npy`` (the inputs, in log order)
and ``disagreements.npz`` (``index`` into the log, ``candidate`` and ``champion`` top-1).

Example:
    >>> import numpy as np, tempfile, os
    >>> from edgeopt.pipeline.shadow import open_log
    >>> path = os.path.join(tempfile.mkdtemp(), "log.npy")
    >>> np.save(path, np.zeros((10, 3), np.float32))
    >>> log = open_log(path)
    >>> log.count, log.sample_shape, [len(c) for c in log.chunks(4)]
    (10, (3,), [4, 4, 2])
"""

from __future__ import annotations

import json
import math
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edgeopt.core.errors import CheckFailed, InputError
from edgeopt.core.result import Progress, reporter

DEFAULT_CHUNK = 256


# -- reading a log ---------------------------------------------------------------------------

class InputLog:
    """A log of model inputs, one sample per row, read chunk by chunk (never all at once)."""

    def __init__(self, path: Path, parts: list, sample_shape: tuple, dtype: np.dtype):
        self.path, self._parts, self.sample_shape, self.dtype = path, parts, sample_shape, dtype
        self.count = sum(n for _, n in parts)

    def chunks(self, size: int = DEFAULT_CHUNK) -> Iterator[np.ndarray]:
        """Arrays of at most ``size`` samples, in log order."""
        for read, n in self._parts:
            for start in range(0, n, size):
                yield read(start, min(size, n - start))


def open_log(path: str | Path) -> InputLog:
    """An ``InputLog`` for a ``.npy`` file, a ``.npz`` file (its ``x`` array, or its only array)
    or a folder of ``.npy`` files (sorted by name; each holds samples (N, ...) or one sample
    with the same shape as the others' rows). ``InputError`` for anything else."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"input log {str(p)!r} does not exist")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix == ".npy")
        if not files:
            raise InputError(f"input log folder {str(p)!r} holds no .npy files")
        heads = []
        for f in files:  # shapes and types only: each file is mapped again when it is read
            a = _npy(f)
            heads.append((a.shape, a.dtype))
            del a
        # A file of one sample has one axis fewer than a file of rows: the most axes is a row file.
        ndim = max(len(shape) for shape, _ in heads)
        parts, shapes = [], set()
        for f, (shape, _) in zip(files, heads):
            single = len(shape) == ndim - 1 or ndim == 1
            rows = (1, *shape) if single else shape
            if len(rows) != ndim and ndim != 1:
                raise InputError(f"input log {str(f)!r} has shape {shape}; the other files' samples "
                                 f"have {ndim - 1} axes")
            shapes.add(tuple(rows[1:]))
            parts.append((_rows(f, single=single), rows[0]))
        if len(shapes) > 1:
            raise InputError(f"input log folder {str(p)!r} mixes sample shapes {sorted(shapes)}")
        if len({dtype for _, dtype in heads}) > 1:
            raise InputError(f"input log folder {str(p)!r} mixes dtypes {sorted({str(d) for _, d in heads})}")
        return InputLog(p, parts, shapes.pop(), heads[0][1])
    if p.suffix == ".npy":
        a = _npy(p)
        if a.ndim < 1:
            raise InputError(f"input log {str(p)!r} is a scalar; expected samples (N, ...)")
        return InputLog(p, [(_rows(p), len(a))], a.shape[1:], a.dtype)
    if p.suffix == ".npz":
        return _npz_log(p)
    raise InputError(f"input log {str(p)!r}: expected a .npy file, a .npz file or a folder of .npy files")


def _npy(path: Path) -> np.ndarray:
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise InputError(f"input log {str(path)!r} is not a plain numpy array: {e}") from None
    _check_dtype(a.dtype, path)
    return a


def _check_dtype(dtype: np.dtype, path) -> None:
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise InputError(f"input log {str(path)!r} holds {dtype} values; expected numbers")


def _rows(path: Path, single: bool = False) -> Callable[[int, int], np.ndarray]:
    """Rows ``start:start + n`` of a .npy file, copied out of a memory map that is closed again
    at once: pages of a map that stays open count in the process's resident memory, so a long
    log read through one map would grow it to the size of the log."""

    def read(start: int, n: int) -> np.ndarray:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
        if single:
            a = a[None]
        rows = np.array(a[start:start + n])
        del a
        return rows

    return read


def _npz_log(path: Path) -> InputLog:
    """Rows of one member of a ``.npz``, read straight out of the (possibly compressed) zip
    stream: ``np.load`` of an npz member would read the whole member into memory."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"input log {str(path)!r} is not a .npz file: {e}") from None
    with zf:
        names = [n for n in zf.namelist() if n.endswith(".npy")]
    keys = [n[:-4] for n in names]
    if "x" in keys:
        key = "x"
    elif len(keys) == 1:
        key = keys[0]
    else:
        raise InputError(f"input log {str(path)!r} holds {keys or 'no arrays'}; expected an array 'x' "
                         "or a single array")

    def header(f):
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        return np.lib.format.read_array_header_2_0(f)

    with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
        try:
            shape, fortran, dtype = header(f)
        except ValueError as e:
            raise InputError(f"input log {str(path)!r}: member {key!r} is not a numpy array: {e}") from None
    if fortran and len(shape) > 1:
        raise InputError(f"input log {str(path)!r}: member {key!r} is in Fortran order; save it C-ordered")
    if dtype.hasobject:
        raise InputError(f"input log {str(path)!r}: member {key!r} holds Python objects; expected numbers")
    _check_dtype(dtype, path)
    if len(shape) < 1:
        raise InputError(f"input log {str(path)!r}: member {key!r} is a scalar; expected samples (N, ...)")
    row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    state: dict = {}

    def read(start: int, n: int) -> np.ndarray:
        # Chunks come in order: keep the member open between calls and read on from where we are.
        if state.get("next") != start:
            for k in ("f", "zf"):
                if k in state:
                    state.pop(k).close()
            state["zf"] = zipfile.ZipFile(path)
            state["f"] = state["zf"].open(f"{key}.npy")
            header(state["f"])
            state["f"].read(start * row)
        data = state["f"].read(n * row)
        if len(data) != n * row:
            raise InputError(f"input log {str(path)!r}: member {key!r} is truncated")
        state["next"] = start + n
        if state["next"] == shape[0]:
            state.pop("f").close()
            state.pop("zf").close()
            state.pop("next")
        return np.frombuffer(data, dtype=dtype).reshape((n, *shape[1:]))

    return InputLog(path, [(read, shape[0])], tuple(shape[1:]), dtype)


# -- the comparison ----------------------------------------------------------------------------

def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _latency(times) -> dict:
    ms = np.frombuffer(times, dtype=np.float64) * 1e3
    return {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90)), "mean": float(ms.mean()),
            "n": int(len(ms))}


def _sample_shape(runner) -> tuple | None:
    shape = list(runner.inputs[0].shape) if runner.inputs else []
    return tuple(shape[1:]) if shape and all(isinstance(d, int) for d in shape[1:]) else None


def compare_runners(candidate, champion, log: InputLog, out: str | Path | None = None,
                    chunk: int = DEFAULT_CHUNK, progress: Callable[[str], None] = lambda s: None) -> dict:
    """Run both runners on every input of ``log``; the summary dict (see the module docstring).
    With ``out``, the disagreeing inputs and ``shadow.json`` are written there."""
    if not isinstance(chunk, int) or chunk < 1:
        raise InputError(f"chunk must be an integer >= 1, got {chunk!r}")
    if log.count == 0:
        raise InputError(f"input log {str(log.path)!r} holds no samples")
    for what, r in (("candidate", candidate), ("champion", champion)):
        want = _sample_shape(r)
        if want is not None and tuple(log.sample_shape) != want:
            raise InputError(f"input log {str(log.path)!r} holds samples of shape {tuple(log.sample_shape)}; "
                             f"the {what} takes {want} (batch axis removed)")
    dtype = np.dtype(getattr(candidate.inputs[0], "dtype", "float32") or "float32")
    folder = None if out is None else Path(out)
    raw = None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        raw = open(folder / "disagreements.raw.tmp", "wb")
    from array import array

    # Kept per input (8 bytes each) for exact percentiles and the index file; everything else
    # is bounded by the chunk.
    index, cand_top, champ_top = array("q"), array("q"), array("q")
    times = {"candidate": array("d"), "champion": array("d")}
    signal = noise = kl = 0.0
    max_abs = 0.0
    classifier = None
    seen = 0
    try:
        for x in log.chunks(chunk):
            x = np.ascontiguousarray(x, dtype=dtype)
            outs = {}
            for what, r in (("candidate", candidate), ("champion", champion)):
                got = []
                for i in range(len(x)):
                    t0 = time.perf_counter()
                    o = r.run([x[i:i + 1]])[0]
                    times[what].append(time.perf_counter() - t0)
                    got.append(np.asarray(o))
                outs[what] = np.concatenate(got).reshape(len(x), -1).astype(np.float64)
            a, b = outs["candidate"], outs["champion"]
            if a.shape != b.shape:
                raise InputError(f"the candidate gives outputs of {a.shape[1]} values per input, the champion "
                                 f"{b.shape[1]}; they cannot be compared")
            if classifier is None:
                classifier = a.shape[1] > 1
            signal += float(np.sum(b * b))
            noise += float(np.sum((a - b) ** 2))
            max_abs = max(max_abs, float(np.max(np.abs(a - b))))
            if classifier:
                lb, la = _log_softmax(b), _log_softmax(a)
                kl += float(np.sum(np.exp(lb) * (lb - la)))
                pa, pb = a.argmax(axis=1), b.argmax(axis=1)
                bad = np.flatnonzero(pa != pb)
                index.extend((seen + bad).tolist())
                cand_top.extend(pa[bad].tolist())
                champ_top.extend(pb[bad].tolist())
                if raw is not None and len(bad):
                    raw.write(np.ascontiguousarray(x[bad]).tobytes())
            seen += len(x)
            progress(f"{seen}/{log.count} inputs, {len(index)} disagreements")
    finally:
        if raw is not None:
            raw.close()
    n = seen
    summary = {
        "inputs": int(n), "log": str(log.path), "classifier": bool(classifier),
        "disagreements": int(len(index)) if classifier else None,
        "disagreement": len(index) / n if classifier else None,
        "sqnr_db": (math.inf if noise == 0 else 10 * math.log10(signal / noise)) if signal > 0 else None,
        "kl_mean": kl / n if classifier else None,
        "max_abs_diff": max_abs,
        "latency_ms": {k: _latency(v) for k, v in times.items()},
    }
    if folder is not None:
        summary["files"] = _write_disagreements(folder, index, cand_top, champ_top, log.sample_shape, dtype)
        (folder / "shadow.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _write_disagreements(folder: Path, index, cand, champ, shape, dtype) -> dict:
    """``disagreements.npy`` (the inputs): a .npy header, then the raw bytes written while
    streaming, copied file to file (nothing held in memory); ``disagreements.npz`` (indices and
    both top-1)."""
    import shutil

    tmp = folder / "disagreements.raw.tmp"
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": (len(index), *shape)}
    with open(folder / "disagreements.npy", "wb") as f, open(tmp, "rb") as raw:
        np.lib.format.write_array_header_1_0(f, header)  # the raw bytes are C-ordered rows
        shutil.copyfileobj(raw, f, 1 << 20)
    tmp.unlink(missing_ok=True)
    np.savez(folder / "disagreements.npz", index=np.asarray(index, dtype=np.int64),
             candidate=np.asarray(cand, dtype=np.int64), champion=np.asarray(champ, dtype=np.int64))
    return {"inputs": str(folder / "disagreements.npy"), "labels": str(folder / "disagreements.npz")}


def shadow(candidate: str, champion: str, inputs: str | Path, *, out: str | Path | None = None,
           max_disagreement: float | None = None, runtime: str | None = None, threads: int | None = None,
           input_shape: str | None = None, chunk: int = DEFAULT_CHUNK,
           progress: Progress = None) -> dict:
    """Open both models, compare them on the log at ``inputs`` (``compare_runners``) and check
    the disagreement rate: ``CheckFailed`` above ``max_disagreement`` (after the files are
    written, so the disagreeing inputs can be looked at)."""
    log = reporter(progress)
    from .bench import open_runner

    if max_disagreement is not None and not (0 <= max_disagreement <= 1):
        raise InputError(f"max_disagreement must be a fraction in [0, 1], got {max_disagreement!r}")
    entries = open_log(inputs)
    work = Path(out) if out is not None else Path("build") / "shadow"
    cand = open_runner(str(candidate), runtime, threads, work / "candidate-build", input_shape)
    champ = open_runner(str(champion), runtime, threads, work / "champion-build", input_shape)
    summary = compare_runners(cand, champ, entries, out=out, chunk=chunk, progress=log)
    summary.update(candidate=str(candidate), champion=str(champion), max_disagreement=max_disagreement)
    if out is not None:
        (Path(out) / "shadow.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if max_disagreement is not None:
        if summary["disagreement"] is None:
            raise InputError("--max-disagreement needs class-score outputs (N, classes); these outputs "
                             "have one value per input")
        if summary["disagreement"] > max_disagreement:
            raise CheckFailed(f"disagreement {summary['disagreement'] * 100:.2f}% > "
                              f"{max_disagreement * 100:.2f}% ({summary['disagreements']} of {summary['inputs']} "
                              "inputs)")
    return summary


def format_summary(s: dict) -> str:
    """The terminal view of a shadow summary."""
    lines = [f"inputs: {s['inputs']} from {s['log']}"]
    if s["disagreement"] is not None:
        lines.append(f"disagreement: {s['disagreement'] * 100:.3f}% ({s['disagreements']} inputs)")
    sq = s["sqnr_db"]
    lines.append("output drift: SQNR " + ("-" if sq is None else "inf" if math.isinf(sq) else f"{sq:.2f} dB")
                 + ("" if s["kl_mean"] is None else f", KL(champion || candidate) {s['kl_mean']:.3g}")
                 + f", max |diff| {s['max_abs_diff']:.3g}")
    for what in ("candidate", "champion"):
        lat = s["latency_ms"][what]
        lines.append(f"latency {what}: median {lat['median']:.4g} ms, p90 {lat['p90']:.4g} ms")
    if s.get("files"):
        lines.append(f"disagreeing inputs: {s['files']['inputs']} (indices: {s['files']['labels']})")
    return "\n".join(lines)
