"""Quality per output, by what the outputs are (issue 26 item 3): every output of a model is
compared with fp32's by its kind, and the report names the worst output, so that int8 zeroing
a detector's class scores (cosine 99.97% over the whole tensor) cannot hide."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeopt.core.errors import InputError
from edgeopt.pipeline.measure import scores
from edgeopt.pipeline.output_quality import (decode_sequences, detection_match, output_quality,
                                             parse_outputs, worst_output)
from edgeopt.pipeline.report_schema import judged_by, make_report, quality
from edgeopt.pipeline.report_text import markdown, text_table
from edgeopt.pipeline.tasks import load_task

ANCHORS, CLASSES = 64, 3


def _yolo_onnx(path, qdq_scale: float | None = None):
    """A tiny YOLO-style head: boxes xywh in pixels (sigmoid * 320) and sigmoid class scores
    joined into one output (1, 4 + C, anchors); ``qdq_scale``: int8's one shared scale over the
    joined output, done by hand with a QuantizeLinear/DequantizeLinear pair (zero point 0)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w_box = rng.normal(0, 0.5, (4, ANCHORS)).astype(np.float32)
    w_cls = rng.normal(0, 0.5, (CLASSES, ANCHORS)).astype(np.float32)
    # class logits 0.8 * tanh(.) - 0.9 in [-1.7, -0.1]: scores 0.15-0.48, many above the 0.25
    # threshold and all below 0.63, half of int8's one step of 1.26
    b_cls = np.full((CLASSES, 1), -0.9, np.float32)
    inits = [numpy_helper.from_array(w_box, "w_box"), numpy_helper.from_array(w_cls, "w_cls"),
             numpy_helper.from_array(b_cls, "b_cls"), numpy_helper.from_array(np.float32(320.0), "px"),
             numpy_helper.from_array(np.float32(0.8), "gain")]
    nodes = [helper.make_node("Mul", ["x", "w_box"], ["box_pre"]),
             helper.make_node("Sigmoid", ["box_pre"], ["box_unit"]),
             helper.make_node("Mul", ["box_unit", "px"], ["boxes"]),
             helper.make_node("Mul", ["x", "w_cls"], ["cls_pre"]),
             helper.make_node("Tanh", ["cls_pre"], ["cls_tanh"]),
             helper.make_node("Mul", ["cls_tanh", "gain"], ["cls_scaled"]),
             helper.make_node("Add", ["cls_scaled", "b_cls"], ["cls_logit"]),
             helper.make_node("Sigmoid", ["cls_logit"], ["scores"])]
    final = "joined"
    nodes.append(helper.make_node("Concat", ["boxes", "scores"], ["joined"], axis=0))
    if qdq_scale is not None:
        inits += [numpy_helper.from_array(np.float32(qdq_scale), "s"),
                  numpy_helper.from_array(np.uint8(0), "zp")]
        nodes += [helper.make_node("QuantizeLinear", ["joined", "s", "zp"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"])]
        final = "dq"
    nodes.append(helper.make_node("Unsqueeze", [final, "axes"], ["det"]))
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "axes"))
    graph = helper.make_graph(nodes, "yolo", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ANCHORS])],
                              [helper.make_tensor_value_info("det", TensorProto.FLOAT, [1, 4 + CLASSES, ANCHORS])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


def _run_onnx(path, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])]


def _yolo_task(tmp_path, outputs=True):
    rng = np.random.default_rng(1)
    extra = {"outputs": np.array(json.dumps([{"name": "det", "kind": "boxes+scores", "classes": CLASSES,
                                               "slices": {"boxes": [0, 4], "scores": [4, 4 + CLASSES]}}]))} \
        if outputs else {}
    np.savez(tmp_path / "images.npz", x=rng.normal(0, 2, (120, ANCHORS)).astype(np.float32), **extra)
    return load_task(str(tmp_path / "images.npz"))


def test_yolo_scores_zeroed_by_one_shared_scale_show_as_the_worst_output(tmp_path):
    task = _yolo_task(tmp_path)
    assert task.outputs[0].kind == "boxes+scores" and not task.labelled
    ref = _run_onnx(_yolo_onnx(tmp_path / "fp32.onnx"), task.test.x)
    got = _run_onnx(_yolo_onnx(tmp_path / "int8.onnx", qdq_scale=1.26), task.test.x)
    assert np.all(got[0][:, 4:] == 0) and ref[0][:, 4:].max() > 0.25  # every class score is gone
    entry = scores(task, got[0], ref[0], got, ref)
    # what the report used to say: cosine over the whole output
    assert entry["agreement_kind"] == "cosine" and entry["agreement"] > 0.99
    worst = entry["worst_output"]
    assert worst["output"] == "det" and worst["figure"] == "matched" and worst["value"] == 0.0
    assert worst["label"] == "det 0.0% matched" and worst["detections"] > 50
    by_name = {r["output"]: r for r in entry["output_quality"]}
    assert by_name["det.boxes"]["snr_db"] > 20 and by_name["det.scores"]["normalized"] == 0.0
    # unlabelled: the task metric is the worst output's agreement, not the whole tensor's cosine
    assert entry["task_metric"]["value"] == 0.0 and entry["task_metric"]["output"] == "det 0.0% matched"
    # fp32 against itself: everything matched
    same = scores(task, ref[0], ref[0], ref, ref)
    assert same["worst_output"]["normalized"] == 1.0 and same["task_metric"]["value"] == 1.0
    # the table, report.md: a "worst output" column that shows it
    base = {"runtime": "onnxruntime", "target": "cpu", "steps": [], "latency_ms": {"median": 1.0, "p90": 1.1}}
    report = make_report([{**base, "name": "fp32", **same}, {**base, "name": "int8", **entry}],
                         {}, {"name": "images", "metric": "agreement"}, None, meta={"created": "2026-01-01"})
    table = text_table(report)
    assert "worst output" in table.splitlines()[0]
    assert "det 0.0% matched" in [line for line in table.splitlines() if line.startswith("int8")][0]
    assert "det 0.0% matched" in markdown(report)
    # the front and the plot judge the row by its worst output, not the whole tensor's cosine
    int8 = next(v for v in report["variants"] if v["name"] == "int8")
    assert quality(int8, judged_by(report)[0]) == 0.0


def test_undeclared_detector_output_is_judged_by_its_worst_channel(tmp_path):
    """Without a declaration the output is judged by SNR, never exact equality: as a whole the
    collapsed head still reads ~48 dB (the boxes' range dominates), per channel a score channel
    reads below 0 dB, and that judges the output."""
    task = _yolo_task(tmp_path, outputs=False)
    ref = _run_onnx(_yolo_onnx(tmp_path / "fp32.onnx"), task.test.x)
    noisy = [ref[0] + np.float32(1e-6)]
    entry = scores(task, noisy[0], ref[0], noisy, ref)
    assert entry["worst_output"]["figure"] == "snr_db" and entry["task_metric"]["value"] > 0.999
    assert "worst_channel" not in entry["worst_output"]
    assert task.agreement(noisy[0], ref[0]) > 0.999  # was exact float equality: 0.56
    got = _run_onnx(_yolo_onnx(tmp_path / "int8.onnx", qdq_scale=1.26), task.test.x)
    entry = scores(task, got[0], ref[0], got, ref)
    worst = entry["worst_output"]
    assert worst["snr_db"] > 40 and worst["worst_channel"]["channel"] >= 4 and worst["worst_channel"]["snr_db"] < 0
    assert worst["normalized"] == 0.0 and entry["task_metric"]["value"] == 0.0
    assert worst["label"].startswith("output ") and f"channel {worst['worst_channel']['channel']} -" in worst["label"]


def test_ctc_sequence_decoding_and_share_of_identical_sequences():
    def onehot(labels, classes=5):
        return np.eye(classes, dtype=np.float32)[labels]

    # steps 1 1 0 2 2 0 2 -> "1 2 2" under CTC (repeats collapse, blank 0 dropped, 0 separates)
    seq = onehot(np.array([[1, 1, 0, 2, 2, 0, 2], [3, 0, 0, 3, 3, 4, 4]]))
    assert decode_sequences(seq, "ctc") == [(1, 2, 2), (3, 3, 4)]
    assert decode_sequences(seq, "argmax")[0] == (1, 1, 0, 2, 2, 0, 2)
    # a variant that differs in one step of a repeat (same CTC string) and one that drops a char
    variant = onehot(np.array([[1, 0, 0, 2, 2, 0, 2], [3, 0, 0, 0, 0, 4, 4]]))
    spec = parse_outputs([{"name": "text", "kind": "sequence", "decode": "ctc"}])
    rows = output_quality([variant], [seq], spec)
    assert rows[0]["figure"] == "identical" and rows[0]["value"] == 0.5 and rows[0]["label"] == "text 50.0% identical"
    argmax = output_quality([variant], [seq], parse_outputs([{"kind": "sequence"}]))
    assert argmax[0]["value"] == 0.0


def test_two_outputs_one_corrupted_names_the_corrupted_one():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (200, 10)).astype(np.float32)
    embedding = rng.normal(0, 1, (200, 16)).astype(np.float32)
    corrupted = embedding + rng.normal(0, 0.6, embedding.shape).astype(np.float32)  # about 4.4 dB
    spec = parse_outputs([{"name": "logits", "kind": "classes"}, {"name": "emb", "kind": "embedding"}])
    rows = output_quality([logits, corrupted], [logits, embedding], spec)
    worst = worst_output(rows)
    assert [r["output"] for r in rows] == ["logits", "emb"] and rows[0]["value"] == 1.0
    assert worst["output"] == "emb" and 3 < worst["snr_db"] < 6 and worst["label"].startswith("emb 4.")
    # undeclared: the first output of a classifier task is judged by top-1, the second by SNR
    rows = output_quality([logits, corrupted], [logits, embedding], (), classifier=True)
    assert [r["figure"] for r in rows] == ["top1", "snr_db"] and worst_output(rows)["output"] == "output1"


def test_detection_match_counts_class_and_iou():
    spec = parse_outputs([{"kind": "boxes+scores", "layout": "anchors_first", "box": "xyxy"}])[0]
    ref = np.array([[[0, 0, 10, 10, 0.9, 0.1], [50, 50, 60, 60, 0.1, 0.8], [1, 1, 10, 10, 0.7, 0.1]]], np.float32)
    shifted = ref.copy()
    shifted[0, [0, 2], :4] += 8  # class 0's boxes moved: IoU with fp32's box below 0.5
    # fp32: the third box is suppressed by the first (NMS, same class), so two detections
    assert detection_match(ref, ref, spec)["value"] == 1.0 and detection_match(ref, ref, spec)["detections"] == 2
    res = detection_match(shifted, ref, spec)
    assert res["detections"] == 2 and res["matched"] == 1 and res["value"] == 0.5
    swapped = ref[..., [0, 1, 2, 3, 5, 4]]  # same boxes, other class
    assert detection_match(swapped, ref, spec)["value"] == 0.0


@pytest.mark.parametrize("outputs, key", [
    ([{"kind": "boxes"}], "'kind' must be"),
    ([{"kind": "sequence", "decode": "beam"}], "'decode' must be"),
    ([{"knd": "classes"}], "unknown key(s) ['knd']"),
    ({"kind": "classes"}, "'outputs' must be a list"),
    ([{"kind": "embedding", "slices": {"a": [4, 2]}}], "'slices' must map"),
    ([{"kind": "boxes+scores", "score_threshold": 2}], "'score_threshold' must be"),
])
def test_bad_output_declarations_name_the_key(outputs, key):
    with pytest.raises(InputError) as e:
        parse_outputs(outputs)
    assert key in str(e.value) and "\n" not in str(e.value)


def test_recipe_task_outputs_parsed_and_refused_with_the_key(tmp_path):
    from edgeopt.pipeline.recipe import parse_recipe

    text = ("model: zoo:digits_cnn\ntask: {source: digits, outputs: [{name: logits, kind: classes}]}\n"
            "variants: {fp32: []}\ntargets: [{runtime: onnxruntime}]\n")
    recipe = parse_recipe(text)
    assert recipe.task == "digits" and recipe.task_outputs == [{"name": "logits", "kind": "classes"}]
    with pytest.raises(InputError, match=r"line 2: task: outputs\[0\]: 'decode' must be argmax or ctc"):
        parse_recipe(text.replace("kind: classes", "kind: sequence, decode: greedy"))
    with pytest.raises(InputError, match="unknown key.*'outputz'"):
        parse_recipe(text.replace("outputs:", "outputz:"))
    # a bad .npz declaration: exit 2 from the command line, one line naming the key
    from tests.helpers import edgeopt_cli

    np.savez(tmp_path / "t.npz", x=np.zeros((40, 1, 32, 32), np.float32),
             outputs=np.array(json.dumps([{"kind": "boxes"}])))
    (tmp_path / "r.yaml").write_text(text.replace("{source: digits, outputs: [{name: logits, kind: classes}]}",
                                                  str(tmp_path / "t.npz")))
    run = edgeopt_cli("run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"))
    assert run.returncode == 2, run.stderr
    assert "outputs[0]: 'kind' must be classes or boxes+scores" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "out").exists()
