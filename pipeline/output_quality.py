"""Quality per output, by what each output is: one figure per output (and per declared slice),
and the worst of them.

Cosine over a whole tensor hides a destroyed part of it: a YOLO-style head concatenates boxes
(0-320 pixels) and sigmoid class scores (0-1) into one output, int8's one scale turns every
score into 0, and the cosine still reads 99.97%. So every output of a model is compared with
the fp32 model's same output by what it is (``OutputSpec.kind``):

* ``classes``: top-1 agreement (argmax over ``class_axis``, default 1, at every position);
* ``boxes+scores``: the share of fp32's detections (score >= ``score_threshold`` after NMS at
  ``nms_iou``) that the variant's detections match (same class, IoU >= ``match_iou``); the YOLO
  layout is ``(N, 4 + classes, anchors)`` with ``xywh`` boxes (``layout: anchors_first`` for
  ``(N, anchors, 4 + classes)``, ``box: xyxy`` for corners);
* ``sequence``: the share of samples whose decoded sequence is identical (argmax over the
  class axis, default the last, per step; ``decode: ctc`` collapses repeats and drops the blank,
  class ``blank``, default 0);
* ``regression``, ``embedding`` or not declared: the SNR of the error against the output's own
  variation in dB (``output_guard.snr_db``) and the cosine to fp32; and per channel (axis 1):
  a channel more than ``WORSE_CHANNEL_DB`` below the whole and under 20 dB is named (``worst_channel``) and
  judges the output, so an undeclared YOLO head whose scores collapsed still shows it.

Every figure is also given as a share in [0, 1] (``normalized``: the share matched / identical /
in agreement, and ``1 - error / variance`` for an SNR, 0 at 0 dB and 0.99 at 20 dB), and the
output with the lowest is ``worst_output``. An output made by a Concat of mixed ranges can be
measured per slice too (``slices: {boxes: [0, 4], scores: [4, 84]}`` on ``axis``, default 1).

Example:
    >>> import numpy as np
    >>> from edgeopt.pipeline.output_quality import parse_outputs, output_quality, worst_output
    >>> ref = np.linspace(0, 1, 40, dtype=np.float32).reshape(4, 10)
    >>> rows = output_quality([ref + 0.001], [ref], parse_outputs([{"kind": "regression"}]))
    >>> rows[0]["figure"], rows[0]["snr_db"] > 40, worst_output(rows)["label"]
    ('snr_db', True, 'output 49.4 dB')
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from edgeopt.core.errors import InputError

KINDS = ("classes", "boxes+scores", "sequence", "regression", "embedding")
#: The keys an output declaration may have (a task's ``outputs`` entries).
OUTPUT_KEYS = ("name", "kind", "classes", "decode", "blank", "class_axis", "layout", "box",
               "score_threshold", "nms_iou", "match_iou", "slices", "axis")
DECODES = ("argmax", "ctc")
LAYOUTS = ("channels_first", "anchors_first")
BOX_FORMATS = ("xywh", "xyxy")


@dataclass(frozen=True)
class OutputSpec:
    """What one model output is and how it is compared with fp32's (see the module docstring)."""

    name: str | None = None
    kind: str | None = None       # None: not declared (SNR and cosine, or top-1 for a classifier)
    classes: int | None = None    # boxes+scores: the class count (default: channels - 4)
    decode: str = "argmax"        # sequence: argmax per step, or ctc
    blank: int = 0                # sequence, ctc: the blank class
    class_axis: int | None = None  # classes: 1; sequence: -1
    layout: str = "channels_first"  # boxes+scores: (N, 4+C, anchors) or anchors_first (N, anchors, 4+C)
    box: str = "xywh"
    score_threshold: float = 0.25
    nms_iou: float = 0.5
    match_iou: float = 0.5
    slices: dict = field(default_factory=dict)  # name -> (start, stop) on ``axis``
    axis: int = 1

    def to_dict(self) -> dict:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}


def parse_outputs(value, where: str = "task outputs") -> tuple[OutputSpec, ...]:
    """A task's ``outputs`` declaration (a list with one mapping per model output, in order) as
    ``OutputSpec``s; ``InputError`` naming the key and what was expected."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise InputError(f"{where}: 'outputs' must be a list with one mapping per model output, "
                         f"e.g. [{{name: boxes, kind: boxes+scores, classes: 80}}], got {value!r}")
    return tuple(_parse_one(item, f"{where}: outputs[{i}]") for i, item in enumerate(value))


def _parse_one(item, where: str) -> OutputSpec:
    if isinstance(item, OutputSpec):
        return item
    if not isinstance(item, dict):
        raise InputError(f"{where} must be a mapping such as {{kind: sequence, decode: ctc}}, got {item!r}")
    unknown = sorted(set(map(str, item)) - set(OUTPUT_KEYS))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; expected {', '.join(OUTPUT_KEYS)}")

    def pick(key, types, allowed=None, check=None, expect=""):
        v = item.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, types) or (allowed and v not in allowed) \
                or (check and not check(v)):
            raise InputError(f"{where}: '{key}' must be {expect or ' or '.join(allowed)}, got {v!r}")
        return v

    spec = {"name": pick("name", str, expect="a string"),
            "kind": pick("kind", str, KINDS),
            "classes": pick("classes", int, check=lambda v: v >= 1, expect="an integer >= 1"),
            "decode": pick("decode", str, DECODES),
            "blank": pick("blank", int, check=lambda v: v >= 0, expect="an integer >= 0"),
            "class_axis": pick("class_axis", int, expect="an integer axis"),
            "layout": pick("layout", str, LAYOUTS),
            "box": pick("box", str, BOX_FORMATS),
            "score_threshold": pick("score_threshold", (int, float), check=lambda v: 0 <= v <= 1,
                                    expect="a number in [0, 1]"),
            "nms_iou": pick("nms_iou", (int, float), check=lambda v: 0 < v <= 1, expect="a number in (0, 1]"),
            "match_iou": pick("match_iou", (int, float), check=lambda v: 0 < v <= 1, expect="a number in (0, 1]"),
            "axis": pick("axis", int, check=lambda v: v >= 1, expect="an integer >= 1 (axis 0 is the batch)")}
    slices = item.get("slices")
    if slices is not None:
        ok = isinstance(slices, dict) and slices and all(
            isinstance(k, str) and isinstance(v, (list, tuple)) and len(v) == 2
            and all(isinstance(i, int) and not isinstance(i, bool) for i in v) and 0 <= v[0] < v[1]
            for k, v in slices.items())
        if not ok:
            raise InputError(f"{where}: 'slices' must map names to [start, stop] with 0 <= start < stop, "
                             f"e.g. {{boxes: [0, 4], scores: [4, 84]}}, got {slices!r}")
        spec["slices"] = {k: (int(v[0]), int(v[1])) for k, v in slices.items()}
    return OutputSpec(**{k: v for k, v in spec.items() if v is not None})


# -- the figures ------------------------------------------------------------------------------

def share_from_snr(db: float) -> float:
    """An SNR as the share of the output's variation that survives: ``1 - error / variance``,
    clipped to [0, 1] (0 dB or worse: 0; 20 dB: 0.99; identical: 1)."""
    if db == math.inf:
        return 1.0
    return float(min(max(1.0 - 10.0 ** (-db / 10.0), 0.0), 1.0))


def snr_figures(test: np.ndarray, ref: np.ndarray) -> dict:
    """SNR (dB, capped at +-999 for JSON) and mean per-sample cosine of ``test`` against ``ref``."""
    from edgeopt.compress.output_guard import snr_db

    from edgeopt.compress.fidelity import compare_outputs

    db = snr_db(ref, test)
    return {"snr_db": float(max(min(db, 999.0), -999.0)), "cosine": compare_outputs(test, ref, "cosine"),
            "normalized": share_from_snr(db)}


#: A channel this many dB below its whole output's SNR, and below ``CHANNEL_DB``, is named and
#: judges the output (20 dB: the channel kept 99% of its variation; above it, nothing to say).
WORSE_CHANNEL_DB = 10.0
CHANNEL_DB = 20.0
#: Channels (axis 1) an output may have for its per-channel SNR; more are left to the whole one.
MAX_CHANNELS = 4096
#: A channel whose fp32 spread is below this share of the whole output's is constant (a bias or
#: padding channel): float rounding alone would give it a low SNR, so it is not judged alone.
CONSTANT_CHANNEL = 1e-6


def worst_channel(test: np.ndarray, ref: np.ndarray) -> dict | None:
    """The channel (index on axis 1) with the lowest SNR, ``{"channel", "snr_db"}``, or None
    for outputs without a channel axis, with one channel, or more than ``MAX_CHANNELS``.

    An undeclared YOLO head (1, 4 + C, anchors) compared as a whole reads 48 dB when int8 zeroed
    every class score (the boxes' range dominates the variation); per channel, a score channel
    reads below 0 dB."""
    if ref.ndim < 2 or not 1 < ref.shape[1] <= MAX_CHANNELS:
        return None
    r = np.moveaxis(ref.astype(np.float64), 1, 0).reshape(ref.shape[1], -1)
    t = np.moveaxis(test.astype(np.float64), 1, 0).reshape(ref.shape[1], -1)
    var, err = r.var(axis=1), np.mean((r - t) ** 2, axis=1)
    judged = var > (CONSTANT_CHANNEL * float(np.std(r))) ** 2
    if not judged.any():
        return None
    with np.errstate(divide="ignore"):
        db = np.where(err == 0, np.inf, 10.0 * np.log10(var / np.where(err == 0, 1.0, err)))
    db = np.where(judged, db, np.inf)
    i = int(np.argmin(db))
    return {"channel": i, "snr_db": float(max(min(db[i], 999.0), -999.0))}


def top1_share(test: np.ndarray, ref: np.ndarray, axis: int) -> float:
    """The share of positions where the argmax over ``axis`` is the same."""
    return float(np.mean(np.argmax(test, axis=axis) == np.argmax(ref, axis=axis)))


def decode_sequences(out: np.ndarray, decode: str = "argmax", blank: int = 0, axis: int = -1) -> list[tuple]:
    """Each sample's decoded sequence: argmax over the class ``axis`` per step; ``ctc`` then
    collapses repeats and drops ``blank``."""
    labels = np.argmax(out, axis=axis).reshape(len(out), -1)
    seqs = []
    for row in labels:
        if decode == "ctc":
            keep = np.ones(len(row), bool)
            keep[1:] = row[1:] != row[:-1]
            row = row[keep & (row != blank)]
        seqs.append(tuple(int(v) for v in row))
    return seqs


def sequence_share(test: np.ndarray, ref: np.ndarray, spec: OutputSpec) -> float:
    """The share of samples whose decoded sequence equals fp32's."""
    axis = -1 if spec.class_axis is None else spec.class_axis
    a = decode_sequences(test, spec.decode, spec.blank, axis)
    b = decode_sequences(ref, spec.decode, spec.blank, axis)
    return float(np.mean([x == y for x, y in zip(a, b)]))


def _xyxy(boxes: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "xyxy":
        return boxes
    cx, cy, w, h = boxes.T
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (M, 4) with every box of ``b`` (K, 4), corners ``x1 y1 x2 y2``."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, highest score first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order):
        i = order[0]
        keep.append(i)
        if len(order) == 1:
            break
        rest = order[1:]
        order = rest[box_iou(boxes[i:i + 1], boxes[rest])[0] < iou]
    return np.asarray(keep, dtype=np.int64)


def detections(sample: np.ndarray, spec: OutputSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sample's detections (boxes xyxy, classes, scores) after the score threshold and
    per-class NMS. ``sample`` is (4 + C, anchors), or (anchors, 4 + C) for ``anchors_first``."""
    rows = sample if spec.layout == "anchors_first" else sample.T  # (anchors, 4 + C)
    rows = rows.reshape(-1, rows.shape[-1]).astype(np.float64)
    classes = spec.classes or rows.shape[1] - 4
    if rows.shape[1] < 4 + classes or classes < 1:
        raise InputError(f"a boxes+scores output needs 4 box values and {classes} class scores per "
                         f"anchor, got {rows.shape[1]} values")
    boxes, cls_scores = _xyxy(rows[:, :4], spec.box), rows[:, 4:4 + classes]
    cls, score = cls_scores.argmax(axis=1), cls_scores.max(axis=1)
    sel = score >= spec.score_threshold
    boxes, cls, score = boxes[sel], cls[sel], score[sel]
    keep = [idx[nms(boxes[idx], score[idx], spec.nms_iou)] for c in np.unique(cls)
            for idx in [np.flatnonzero(cls == c)]]
    keep = np.concatenate(keep) if keep else np.zeros(0, np.int64)
    return boxes[keep], cls[keep], score[keep]


def detection_match(test: np.ndarray, ref: np.ndarray, spec: OutputSpec) -> dict:
    """The share of fp32's detections matched by the variant's (greedy, fp32's highest score
    first, same class, IoU >= ``match_iou``), with the counts. No fp32 detection at all: 1.0
    when the variant has none either, else 0.0."""
    found = matched = extra = 0
    for t, r in zip(test, ref):
        rb, rc, rs = detections(r, spec)
        tb, tc, _ = detections(t, spec)
        found += len(rb)
        used = np.zeros(len(tb), bool)
        iou = box_iou(rb, tb) if len(rb) and len(tb) else np.zeros((len(rb), len(tb)))
        for i in np.argsort(-rs, kind="stable"):
            ok = (~used) & (tc == rc[i]) & (iou[i] >= spec.match_iou)
            if ok.any():
                used[int(np.argmax(np.where(ok, iou[i], -1.0)))] = True
                matched += 1
        extra += int((~used).sum())
    share = matched / found if found else (1.0 if extra == 0 else 0.0)
    return {"value": float(share), "detections": found, "matched": matched, "unmatched_variant": extra}


# -- per output -------------------------------------------------------------------------------

def default_spec(index: int, shape: tuple, classifier: bool) -> OutputSpec:
    """An undeclared output: top-1 when it is the first output of a classifier task (N, C), else
    SNR and cosine."""
    return OutputSpec(kind="classes" if classifier and index == 0 and len(shape) == 2 else None)


def output_quality(outputs, references, specs=(), classifier: bool = False) -> list[dict]:
    """One row per output (and per declared slice): ``output`` (its name), ``kind``, ``figure``
    (``top1``, ``matched``, ``identical`` or ``snr_db``), ``value``, ``normalized`` (a share in
    [0, 1], what ``worst_output`` compares), ``label`` (e.g. ``scores 0.0% matched``) and, for
    every output, ``snr_db`` and ``cosine``.

    ``outputs`` / ``references``: the variant's and fp32's outputs over the same samples, one
    array (N, ...) per model output, in the model's order. ``specs``: the task's declaration
    (fewer than the outputs: the rest are undeclared). ``classifier``: the task scores top-1.
    """
    if len(outputs) != len(references):
        raise InputError(f"the variant has {len(outputs)} outputs, the fp32 model {len(references)}")
    if specs and len(specs) > len(outputs):
        raise InputError(f"the task declares {len(specs)} outputs, the model has {len(outputs)}")
    rows = []
    for i, (out, ref) in enumerate(zip(outputs, references)):
        out, ref = np.asarray(out), np.asarray(ref)
        if out.shape != ref.shape:
            raise InputError(f"output {i} has shape {out.shape}, fp32's {ref.shape}")
        spec = specs[i] if i < len(specs) else default_spec(i, ref.shape, classifier)
        name = spec.name or ("output" if i == 0 else f"output{i}")
        rows.append(_row(name, spec, out, ref))
        for sname, (start, stop) in spec.slices.items():
            if spec.axis >= ref.ndim or stop > ref.shape[spec.axis]:
                raise InputError(f"output {name!r}: slice {sname!r} [{start}, {stop}] on axis {spec.axis} "
                                 f"does not fit its shape {ref.shape}")
            index = (slice(None),) * spec.axis + (slice(start, stop),)
            rows.append(_row(f"{name}.{sname}", OutputSpec(), out[index], ref[index]))
    return rows


def _row(name: str, spec: OutputSpec, out: np.ndarray, ref: np.ndarray) -> dict:
    row = {"output": name, "kind": spec.kind or "unspecified", **snr_figures(out, ref)}
    if spec.kind == "classes":
        axis = 1 if spec.class_axis is None else spec.class_axis
        row.update(figure="top1", value=top1_share(out, ref, axis))
        row["normalized"] = row["value"]
    elif spec.kind == "boxes+scores":
        found = detection_match(out, ref, spec)
        row.update(figure="matched", **found)
        row["normalized"] = row["value"]
    elif spec.kind == "sequence":
        row.update(figure="identical", value=sequence_share(out, ref, spec))
        row["normalized"] = row["value"]
    else:
        row.update(figure="snr_db", value=row["snr_db"])
        channel = worst_channel(out, ref)
        if channel is not None and channel["snr_db"] < min(row["snr_db"] - WORSE_CHANNEL_DB, CHANNEL_DB):
            # one channel much worse than the whole: the output is judged by it
            row["worst_channel"] = channel
            row["normalized"] = min(row["normalized"], share_from_snr(channel["snr_db"]))
    row["label"] = describe(row)
    return row


def describe(row: dict) -> str:
    """A row as one short phrase: ``scores 0.0% matched``, ``text 56.0% identical``,
    ``logits 99.2% top-1``, ``out1 4.2 dB``, ``det 48.4 dB, channel 5 -11.1 dB``."""
    v = row["value"]
    if row["figure"] == "snr_db":
        text = f"{row['output']} {'inf' if v >= 999 else f'{v:.1f}'} dB"
        channel = row.get("worst_channel")
        return text + (f", channel {channel['channel']} {channel['snr_db']:.1f} dB" if channel else "")
    what = {"top1": "top-1", "matched": "matched", "identical": "identical"}[row["figure"]]
    return f"{row['output']} {v * 100:.1f}% {what}"


def worst_output(rows: list[dict]) -> dict | None:
    """The row with the lowest ``normalized`` figure (the first such, in the model's order)."""
    return min(rows, key=lambda r: r["normalized"]) if rows else None


@dataclass(frozen=True)
class DeclaredOutputs:
    """Inputs and what the model's outputs are: the evaluation data a study hands quantize's
    ``min_agreement`` for a task that declares its outputs, so the budget is the report's worst
    output (identical decoded sequences for a sequence output), not top-1 over a flattened tensor.

    >>> ref = np.eye(4, dtype=np.float32)[[[1, 0, 2], [3, 3, 0]]]  # (2 samples, 3 steps, 4 classes)
    >>> test = ref.copy(); test[1, 2] = np.eye(4)[1]               # sample 1 reads one more symbol
    >>> DeclaredOutputs(None, parse_outputs([{"kind": "sequence", "decode": "ctc"}])).output_agreement([test], [ref])
    0.5
    """

    x: object
    specs: tuple = ()
    classifier: bool = False

    def output_agreement(self, outputs: list, references: list) -> float:
        """The worst output's share (``normalized``) of ``outputs`` against ``references``."""
        return float(worst_output(output_quality(outputs, references, self.specs, self.classifier))["normalized"])
