"""The issue's quality bars for the real models, computed on a finished study's artifacts.

    .venv/bin/python benchmarks/real_models/quality.py KIND STUDY_DIR TASKS_DIR [--runtimes onnxruntime tvm]

KIND is `rec` (PP-OCRv4 recognizer: share of CTC-greedy decoded strings identical to fp32's, bar
>= 90%; and fp32's strings against the rendered text), `yolo` (nudenet 320n: detections matched to
fp32's at IoU 0.5 with the same class, bar >= 95%, at nudenet's score threshold (above 0.25,
class-agnostic NMS at IoU 0.45) and at 0.05;
arg-max class agreement on the anchors fp32 scores >= 0.01), `det` (PP-OCRv4 DB map: IoU of the
text masks at rapidocr's threshold 0.3 against fp32's) or `cls` (accuracy on the 0/180 labels).
Every input of the task file is used (the study scores only its test split). The fp32 reference
is the study's base model on onnxruntime; the int8 model is the study's `variants/int8/quantize`
ONNX on onnxruntime and, with `tvm`, the `variants/int8/tvm-cpu` artifact. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from edgeopt.runtimes import load

NUDENET_SCORE = 0.25    # nudenet.py keeps anchors scoring >= 0.2, then cv2.dnn.NMSBoxes those > 0.25
NMS_IOU = 0.45          # and suppresses overlaps above this, whatever their class
DB_THRESH = 0.3         # rapidocr's Det.thresh


def run_all(runner, x: np.ndarray, batch: int = 1) -> np.ndarray:
    """The first output for every input row, one call per row (the artifacts are batch 1)."""
    return np.concatenate([runner.run([x[i:i + batch]])[0] for i in range(0, len(x), batch)])


def ctc_greedy(probs: np.ndarray) -> list[tuple[int, ...]]:
    """PaddleOCR's CTC decode: arg-max per step, repeats collapsed, blank (0) dropped."""
    out = []
    for steps in probs.argmax(-1):
        keep = np.r_[True, steps[1:] != steps[:-1]] & (steps != 0)
        out.append(tuple(int(k) for k in steps[keep]))
    return out


def charset(model_path: Path) -> list[str]:
    """The recognizer's symbols from its `character` metadata (rapidocr ships them there),
    with the blank first and the space last, as PaddleOCR's CTCLabelDecode builds them."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(model_path), load_external_data=False).metadata_props}
    return [""] + meta.get("character", "").splitlines() + [" "]


def rec_quality(ref: np.ndarray, test: np.ndarray, texts: list[str], symbols: list[str]) -> dict:
    ref_ids, test_ids = ctc_greedy(ref), ctc_greedy(test)
    ref_strings = ["".join(symbols[k] for k in ids) for ids in ref_ids]
    same = sum(a == b for a, b in zip(ref_ids, test_ids))
    return {"strings": len(ref_ids), "identical_to_fp32": same / len(ref_ids),
            "fp32_reads_rendered_text": sum(s == t for s, t in zip(ref_strings, texts)) / len(texts),
            "differing": [(texts[i], "".join(symbols[k] for k in test_ids[i]))
                          for i in range(len(ref_ids)) if ref_ids[i] != test_ids[i]][:5]}


def yolo_detections(pred: np.ndarray, threshold: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per image: xyxy boxes, class ids and scores above `threshold`, after nudenet's NMS
    (cv2.dnn.NMSBoxes over every class at once, highest score first), without OpenCV."""
    out = []
    for rows in pred.transpose(0, 2, 1):             # (anchors, 4 + classes)
        scores, classes = rows[:, 4:].max(1), rows[:, 4:].argmax(1)
        keep = np.flatnonzero(scores > threshold)
        keep = keep[np.argsort(-scores[keep], kind="stable")]
        cx, cy, w, h = rows[keep, :4].T
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        chosen: list[int] = []
        for i in range(len(keep)):
            if not chosen or iou(boxes[i:i + 1], boxes[chosen]).max() <= NMS_IOU:
                chosen.append(i)
        out.append((boxes[chosen], classes[keep][chosen], scores[keep][chosen]))
    return out


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda z: (z[:, 2:] - z[:, :2]).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def matched_share(ref, test) -> tuple[int, int]:
    """fp32 detections with an int8 detection of the same class at IoU >= 0.5 (greedy, one-to-one)."""
    total = matched = 0
    for (rb, rc, _), (tb, tc, _) in zip(ref, test):
        total += len(rb)
        if not len(rb) or not len(tb):
            continue
        overlap = iou(rb, tb) * (rc[:, None] == tc[None, :])
        used = set()
        for i in np.argsort(-overlap.max(1)):
            j = int(np.argmax(np.where([k in used for k in range(len(tb))], -1, overlap[i])))
            if overlap[i, j] >= 0.5 and j not in used:
                used.add(j)
                matched += 1
    return matched, total


def yolo_quality(ref: np.ndarray, test: np.ndarray) -> dict:
    result = {}
    for threshold in (NUDENET_SCORE, 0.05):
        r, t = yolo_detections(ref, threshold), yolo_detections(test, threshold)
        matched, total = matched_share(r, t)
        classes, counts = np.unique(np.concatenate([d[1] for d in r]), return_counts=True)
        result[f"score>{threshold}"] = {"fp32_detections": total, "int8_detections": sum(len(d[0]) for d in t),
                                        "matched_iou0.5_same_class": matched / total if total else None,
                                        "images_with_detections": sum(len(d[0]) > 0 for d in r),
                                        "fp32_classes": {int(c): int(k) for c, k in zip(classes, counts)}}
    ref_scores, test_scores = ref[:, 4:, :], test[:, 4:, :]
    live = ref_scores.max(1) >= 0.01
    result["class_agreement_on_anchors_fp32>=0.01"] = float(
        (ref_scores.argmax(1)[live] == test_scores.argmax(1)[live]).mean()) if live.any() else None
    result["anchors_fp32>=0.01"] = int(live.sum())
    result["score_max_abs_diff"] = float(np.abs(ref_scores - test_scores).max())
    result["box_mean_abs_diff_px"] = float(np.abs(ref[:, :4] - test[:, :4]).mean())
    return result


def det_quality(ref: np.ndarray, test: np.ndarray) -> dict:
    a, b = ref > DB_THRESH, test > DB_THRESH
    return {"images": len(ref), "text_mask_iou": float((a & b).sum() / max(1, (a | b).sum())),
            "fp32_text_pixels": float(a.mean()), "prob_mean_abs_diff": float(np.abs(ref - test).mean())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("rec", "yolo", "det", "cls"))
    parser.add_argument("study", type=Path)
    parser.add_argument("tasks", type=Path)
    parser.add_argument("--runtimes", nargs="+", default=["onnxruntime"], choices=("onnxruntime", "tvm"))
    parser.add_argument("--limit", type=int, default=None, help="use the first N inputs only")
    args = parser.parse_args(argv)
    task = {"rec": "ocr_rec", "yolo": "yolo", "det": "ocr_det", "cls": "ocr_cls"}[args.kind]
    data = np.load(args.tasks / f"{task}.npz")
    x = data["x"][:args.limit].astype(np.float32)
    base = args.study / "base-model"
    ref = run_all(load(base, "onnxruntime", threads=2), x)
    report = {"model": json.loads((args.study / "report.json").read_text())["meta"]["model"], "inputs": len(x)}
    for runtime in args.runtimes:
        folder = args.study / "variants" / "int8" / ("quantize" if runtime == "onnxruntime" else "tvm-cpu")
        test = run_all(load(folder, runtime, threads=2), x)
        if args.kind == "rec":
            texts = json.loads((args.tasks / "texts.json").read_text())[:len(x)]
            quality = rec_quality(ref, test, texts, charset(base / "model.onnx"))
        elif args.kind == "yolo":
            quality = yolo_quality(ref, test)
        elif args.kind == "det":
            quality = det_quality(ref, test)
        else:
            y = data["y"][:len(x)]
            quality = {"fp32_accuracy": float((ref.argmax(1) == y).mean()),
                       "int8_accuracy": float((test.argmax(1) == y).mean()),
                       "agreement": float((ref.argmax(1) == test.argmax(1)).mean())}
        report[f"int8/{runtime}"] = quality
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
