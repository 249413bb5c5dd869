"""int8 that never silently breaks an output: per-output fidelity and the nodes kept in float.

One scale per tensor is what static int8 gives every activation. Where a model concatenates
tensors of very different ranges into one (a YOLO-style head joins boxes in pixels, 0-320, and
sigmoid class scores, 0-1), the narrow part gets a fraction of one quantization step and becomes
exactly zero; cosine over the whole output still reads 99.97%. So ``quantize``:

1. keeps in float every Concat whose inputs' spans (max - min over the calibration samples)
   differ by more than ``MIXED_RANGE_RATIO`` (the narrowest input would get fewer than
   256 / ratio levels), before quantizing;
2. measures every graph output, and every slice of an output a Concat produces, against the
   float model on the calibration samples (``output_fidelity``): SNR of the int8 error against
   the slice's own variation, in dB; and for a slice, also the SNR on its values that matter
   (``salient_snr_db``: the values at least ``SALIENT_SHARE`` of the slice's largest deviation
   away from its median; a score slice is mostly background near 0, whose small error would
   otherwise outweigh a detection's score falling from 0.8 to 0.5);
3. where a slice collapsed (``BROKEN_DB``), or a Concat slice's values that matter degraded
   (``DEGRADED_DB``), keeps in float the nodes that feed it, back to the nearest compute nodes,
   and quantizes again (at most ``MAX_ROUNDS`` times, one segment further back each round); a
   slice that is still broken is named in the record, never hidden in an average.

Example:
    >>> import numpy as np
    >>> from edgeopt.compress.output_guard import snr_db
    >>> ref = np.linspace(0, 1, 100)
    >>> round(snr_db(ref, ref + 0.01), 1), snr_db(ref, np.zeros_like(ref)) < 6
    (29.3, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

#: A Concat whose inputs' spans differ by more than this is kept in float (the narrowest input
#: would get fewer than 256 / 16 = 16 of the shared scale's levels).
MIXED_RANGE_RATIO = 16.0
#: An output (or slice) whose int8 error is as large as its own variation has collapsed:
#: 0 dB is an error as large as the signal's standard deviation (a slice turned to zeros reads
#: below it). Healthy int8 outputs
#: measure 15-40 dB.
BROKEN_DB = 0.0
#: A Concat slice whose values that matter (``SALIENT_SHARE``) read below this SNR is degraded:
#: their int8 error is over 18% (RMS) of their own size. A YOLOv8 head's class scores, 10 dB
#: on nudenet's detector: mean_minmax calibration capped the class logits at 0 (scores at 0.5),
#: and 6% of fp32's detections were lost.
DEGRADED_DB = 15.0
#: A value of a slice matters when it is at least this share of the slice's largest deviation
#: from its median away from that median (a sigmoid score of 0.09 or more where the best is 0.9).
SALIENT_SHARE = 0.1
#: Rounds of "keep the nodes feeding a broken output in float, quantize again".
MAX_ROUNDS = 3
#: Calibration samples the guard measures on (two float and one int8 pass each).
GUARD_SAMPLES = 16
#: Ops between a Concat and an output that keep the dimensions up to the Concat's axis in place
#: when the shapes agree there (YOLO heads flatten the anchors after joining).
_LAYOUT_KEEPING = ("Reshape", "Flatten", "Identity", "Squeeze", "Unsqueeze", "Cast")
#: Ops whose quantization the guard walks back to (a segment ends at them, inclusive).
_COMPUTE = ("Conv", "MatMul", "Gemm", "ConvTranspose")


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-noise ratio of ``test`` against ``reference``, in dB, with the signal taken
    around its mean (a constant offset is not signal: sigmoid scores near 0.01 all become 0
    without the uncentered ratio noticing much). inf when identical; -inf when the reference
    is constant and the test differs."""
    ref = np.asarray(reference, np.float64).ravel()
    err = float(np.mean((ref - np.asarray(test, np.float64).ravel()) ** 2))
    var = float(np.var(ref))
    if err == 0.0:
        return math.inf
    if var == 0.0:
        return -math.inf
    return 10.0 * math.log10(var / err)


@dataclass(frozen=True)
class OutputSlice:
    """A graph output, or the part of it one input of its Concat fills (``start:stop`` on ``axis``)."""

    output: str
    source: str  # the tensor that fills it (the output itself, or the Concat's input)
    axis: int | None = None
    start: int | None = None
    stop: int | None = None

    @property
    def label(self) -> str:
        if self.axis is None:
            return self.output
        return f"{self.output}[axis {self.axis}: {self.start}:{self.stop}]"

    def take(self, value: np.ndarray) -> np.ndarray:
        if self.axis is None:
            return value
        index = [slice(None)] * value.ndim
        index[self.axis] = slice(self.start, self.stop)
        return value[tuple(index)]


class FloatGraph:
    """The float (pre-processed) model and its values on a few calibration samples.

    Runs the model once with every Concat input added as an output, which gives both the
    Concats' input ranges and the sizes of each output's slices.
    """

    def __init__(self, path: Path, feeds: Sequence[dict]):
        import onnx

        self.model = onnx.load(str(path), load_external_data=False)
        g = self.model.graph
        self.producer = {o: n for n in g.node for o in n.output}
        self.outputs = [o.name for o in g.output]
        self.concats = [n for n in g.node if n.op_type == "Concat"]
        wanted = list(dict.fromkeys(self.outputs + [t for n in self.concats for t in [*n.input, n.output[0]] if t]))
        self.values = _run(onnx.load(str(path)), list(feeds), wanted)

    def mixed_range_concats(self, ratio: float = MIXED_RANGE_RATIO) -> list[dict]:
        """Concats whose inputs' spans differ by more than ``ratio``: name, op, why."""
        found = []
        for n in self.concats:
            spans = {}
            for name in n.input:
                vals = self.values.get(name)
                if vals is None:
                    continue
                lo = min(float(np.min(v)) for v in vals)
                hi = max(float(np.max(v)) for v in vals)
                if hi > lo:  # a constant input (zero span) takes no levels of its own
                    spans[name] = hi - lo
            if len(spans) < 2:
                continue
            wide, narrow = max(spans.values()), min(spans.values())
            if wide / narrow > ratio:
                found.append({"node": n.name, "op": "Concat",
                              "why": f"inputs span {narrow:.3g} to {wide:.3g} ({wide / narrow:.0f}x): "
                                     f"one int8 scale would leave the narrowest "
                                     f"{max(255 * narrow / wide, 0):.1f} levels"})
        return found

    def slices(self) -> list[OutputSlice]:
        """Every graph output, and the slices of those a Concat produces (directly, or through
        reshapes that keep the Concat's axis)."""
        out = []
        for name in self.outputs:
            out.append(OutputSlice(name, name))
            n = self.producer.get(name)
            while n is not None and n.op_type in _LAYOUT_KEEPING:  # Concat -> Flatten -> output
                n = self.producer.get(n.input[0])
            if n is None or n.op_type != "Concat" or len(n.input) < 2:
                continue
            joined, shape = self.values[n.output[0]][0].shape, self.values[name][0].shape
            axis = next((a.i for a in n.attribute if a.name == "axis"), 0) % max(len(joined), 1)
            if joined[:axis + 1] != shape[:axis + 1]:  # reshaped across the axis: no slices
                continue
            start = 0
            for src in n.input:
                size = self.values[src][0].shape[axis]
                out.append(OutputSlice(name, src, axis, start, start + size))
                start += size
        return out

    def segment(self, tensor: str, done: set) -> list:
        """The float-graph nodes that compute ``tensor`` back to (and including) the nearest
        compute nodes, leaving out ``done``; the compute nodes' own inputs start the next one."""
        seen, stack, nodes = set(), [tensor], []
        while stack:
            n = self.producer.get(stack.pop())
            if n is None or n.name in seen:
                continue
            seen.add(n.name)
            if n.name not in done:
                nodes.append(n)
            if n.op_type in _COMPUTE and n.name not in done:
                continue
            stack.extend(i for i in n.input if i)
        return nodes


def salient_snr_db(reference: np.ndarray, test: np.ndarray, share: float = SALIENT_SHARE) -> float:
    """SNR (dB) on the values that matter: those at least ``share`` of the largest deviation
    from the reference's median away from it, their deviation the signal. inf when the
    reference is constant or the test equals it there.

    Example:
        >>> import numpy as np
        >>> scores = np.r_[np.full(95, 0.01), np.full(5, 0.9)]  # background, five detections
        >>> capped = np.minimum(scores, 0.5)                    # int8 range ending at 0.5
        >>> round(snr_db(scores, capped), 1), round(salient_snr_db(scores, capped), 1)
        (6.7, 6.9)
    """
    ref = np.asarray(reference, np.float64).ravel()
    dev = np.abs(ref - np.median(ref)) if ref.size else ref
    if not dev.size or dev.max() == 0:
        return math.inf
    keep = dev >= share * dev.max()
    err = float(np.mean((ref[keep] - np.asarray(test, np.float64).ravel()[keep]) ** 2))
    return math.inf if err == 0 else 10.0 * math.log10(float(np.mean(dev[keep] ** 2)) / err)


def output_fidelity(graph: FloatGraph, int8: Path, feeds: Sequence[dict]) -> list[dict]:
    """Per output and per Concat slice of an output: SNR (dB), max abs error, and ``broken``;
    a slice also has ``salient_snr_db`` (its values that matter) and is broken when that is
    below ``DEGRADED_DB``."""
    import onnx

    got = _run(onnx.load(str(int8)), list(feeds), graph.outputs)
    rows = []
    for s in graph.slices():
        ref = np.concatenate([s.take(v).ravel() for v in graph.values[s.output]])
        test = np.concatenate([s.take(v).ravel() for v in got[s.output]])
        db = snr_db(ref, test)
        row = {"output": s.label, "snr_db": _finite(db),
               "max_abs": float(np.max(np.abs(ref - test))) if ref.size else 0.0,
               "broken": db < BROKEN_DB, "source": s.source}
        if s.axis is not None:
            salient = salient_snr_db(ref, test)
            row["salient_snr_db"] = _finite(salient)
            if not row["broken"] and salient < DEGRADED_DB:
                row["broken"] = True
                row["degraded"] = True
        rows.append(row)
    return rows


def guard(pre: Path, feeds: Sequence[dict], quantize_with: Callable[[list], Path],
          excluded: list[str], say: Callable[[str], None]) -> tuple[Path, list[str], dict]:
    """Quantize with mixed-range Concats in float, then keep in float what feeds a collapsed
    output until none is left (or ``MAX_ROUNDS``). Returns the model, the excluded node names
    and the record's ``kept_float`` (node, op, why), ``outputs`` and ``broken_outputs``."""
    graph = FloatGraph(pre, feeds[:GUARD_SAMPLES])
    kept = [k for k in graph.mixed_range_concats() if k["node"] not in excluded]
    for k in kept:
        say(f"kept {k['node']} in float: {k['why']}")
    excluded = [*excluded, *(k["node"] for k in kept)]
    candidate = quantize_with(excluded)
    rows = output_fidelity(graph, candidate, feeds[:GUARD_SAMPLES])
    for _ in range(MAX_ROUNDS):
        broken = [r for r in rows if r["broken"]]
        if not broken:
            break
        added = []
        for r in broken:
            for n in graph.segment(r["source"], set(excluded) | {a["node"] for a in added}):
                added.append({"node": n.name, "op": n.op_type, "why": f"feeds {r['output']}, {_state(r)}"})
        if not added:
            break
        for r in broken:
            say(f"output {r['output']} {'degraded' if r.get('degraded') else 'collapsed'} in int8 "
                f"({_state(r)}): keeping the {sum(1 for a in added if r['output'] in a['why'])} "
                f"nodes that feed it in float")
        kept += added
        excluded = [*excluded, *(a["node"] for a in added)]
        candidate = quantize_with(excluded)
        rows = output_fidelity(graph, candidate, feeds[:GUARD_SAMPLES])
    broken = [r["output"] for r in rows if r["broken"]]
    for name in broken:
        say(f"warning: output {name} is still broken in int8 after keeping its producers in float")
    for r in rows:
        r.pop("source")
    return candidate, excluded, {"kept_float": kept, "outputs": rows, "broken_outputs": broken,
                                 "worst_output": min(rows, key=lambda r: r["snr_db"]) if rows else None}


def _run(model, feeds: list[dict], names: list[str]) -> dict[str, list[np.ndarray]]:
    """Values of the tensors ``names`` (added as graph outputs where needed) over ``feeds``."""
    import onnx
    import onnxruntime as ort

    have = {o.name for o in model.graph.output}
    for name in names:
        if name not in have:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values: dict[str, list] = {n: [] for n in names}
    for feed in feeds:
        for name, v in zip(names, session.run(names, feed)):
            values[name].append(np.asarray(v))
    return values


def _finite(db: float) -> float:
    """JSON has no infinities: cap at +-999 dB (identical is 999)."""
    return float(max(min(db, 999.0), -999.0))


def _state(row: dict) -> str:
    """Why a row counts as broken, in words."""
    if row.get("degraded"):
        # rounded down: 14.96 dB must not read as "15.0 (below 15.0)"
        return (f"whose values that matter read {math.floor(row['salient_snr_db'] * 10) / 10:.1f} dB "
                f"in int8 (below {_fmt(DEGRADED_DB)})")
    return f"whose int8 SNR was {_fmt(row['snr_db'])} dB"


def _fmt(db: float) -> str:
    return f"{db:.1f}"
