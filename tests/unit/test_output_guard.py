"""int8 never silently breaks an output: a YOLO-style boxes + scores Concat keeps its scores."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgeopt.compile import ExportConfig, export
from edgeopt.compress import QuantizeConfig, quantize
from edgeopt.compress.output_guard import snr_db


class BoxesAndScores(torch.nn.Module):
    """A detector head in the YOLOv8 manner: boxes in pixels (0-320) and sigmoid class scores
    (0-1) concatenated into one (1, 4 + classes, anchors) output."""

    def __init__(self, classes: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(16, 16, 3, stride=2, padding=1), torch.nn.ReLU())
        self.box = torch.nn.Conv2d(16, 4, 1)
        self.cls = torch.nn.Conv2d(16, classes, 1)
        # per-anchor strides times the grid, as YOLOv8's head scales its boxes to pixels
        self.register_buffer("stride", torch.linspace(40.0, 320.0, 64).reshape(1, 1, 64))

    def forward(self, x):
        f = self.body(x)
        boxes = torch.sigmoid(self.box(f)).flatten(2) * self.stride
        scores = torch.sigmoid(self.cls(f)).flatten(2)
        return torch.cat([boxes, scores], 1)


def _samples(n, seed):
    rng = np.random.default_rng(seed)
    return [rng.random((1, 3, 16, 16), dtype=np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    d = tmp_path_factory.mktemp("det")
    return export(BoxesAndScores(), ExportConfig(), _samples(1, 0)[0], out=d / "fp32.onnx").path


def _scores_snr(fp32, int8, samples):
    f, q = ort.InferenceSession(str(fp32)), ort.InferenceSession(str(int8))
    ref = np.concatenate([f.run(None, {f.get_inputs()[0].name: x})[0][:, 4:] for x in samples])
    got = np.concatenate([q.run(None, {q.get_inputs()[0].name: x})[0][:, 4:] for x in samples])
    return snr_db(ref, got)


def test_a_mixed_range_concat_is_kept_in_float_and_the_scores_survive(detector, tmp_path):
    r = quantize(detector, QuantizeConfig(debug_layers=0), _samples(16, 1), out=tmp_path / "q.onnx")
    m = r.record["metrics"]
    kept = {k["node"]: k for k in m["kept_float"]}
    concat = [k for k in kept.values() if k["op"] == "Concat"]
    assert len(concat) == 1 and "levels" in concat[0]["why"], m["kept_float"]
    assert concat[0]["node"] in m["nodes_in_float"]
    assert m["compute_nodes_quantized"] == m["compute_nodes_total"], "the convs stay int8"
    # the record measures every output and each Concat slice of it
    labels = [o["output"] for o in m["outputs"]]
    assert len(labels) == 3 and any("4:7" in s for s in labels), labels
    assert m["broken_outputs"] == [] and all(o["snr_db"] > 10 for o in m["outputs"])
    assert _scores_snr(detector, r.path, _samples(8, 2)) > 10


def test_one_scale_over_boxes_and_scores_is_named_broken_while_the_whole_looks_fine(detector, tmp_path):
    """What went wrong in the wild, built by hand: onnxruntime gave a YOLOv8 head's joined output
    one scale (1.26, zero point 0), every score rounded to 0, and cosine over the tensor read
    99.97%. The guard's per-slice measurement names the scores broken."""
    import onnx
    from onnx import helper, numpy_helper

    from edgeopt.compress.output_guard import FloatGraph, output_fidelity

    m = onnx.load(str(detector))
    g = m.graph
    out = g.output[0].name
    producer = next(n for n in g.node if out in n.output)
    producer.output[0] = out + "_float"
    g.initializer.extend([numpy_helper.from_array(np.array(1.26, np.float32), "s"),
                          numpy_helper.from_array(np.array(0, np.uint8), "z")])
    g.node.extend([helper.make_node("QuantizeLinear", [out + "_float", "s", "z"], [out + "_q"]),
                   helper.make_node("DequantizeLinear", [out + "_q", "s", "z"], [out])])
    broken = tmp_path / "one-scale.onnx"
    onnx.save(m, str(broken))
    feeds = [{g.input[0].name: x} for x in _samples(8, 2)]
    rows = {r["output"]: r for r in output_fidelity(FloatGraph(detector, feeds), broken, feeds)}
    whole = rows[out]
    scores = next(r for k, r in rows.items() if "4:7" in k)
    assert scores["broken"] and scores["snr_db"] < 0
    assert not whole["broken"] and whole["snr_db"] > 20, "the whole tensor's figure hides it"


def test_coarse_scores_pass_the_collapse_line_but_are_degraded_where_they_matter(detector, tmp_path):
    """A scale too coarse for the scores (one step of 0.05 where they spread over 0.47-0.57;
    on nudenet's detector mean_minmax capped the class logits at 0, every score above 0.5 read
    0.5, and 6% of the detections were lost) leaves the slice above the collapse line
    (``BROKEN_DB``); the SNR on its values that matter names it degraded, and the guard keeps
    what feeds the scores in float until they are healthy, saying why."""
    import onnx
    from onnx import helper, numpy_helper

    from edgeopt.compress.output_guard import BROKEN_DB, DEGRADED_DB, FloatGraph, guard, output_fidelity

    m = onnx.load(str(detector))
    g = m.graph
    concat = next(n for n in g.node if n.op_type == "Concat")
    scores = concat.input[1]
    sigmoid = next(n for n in g.node if scores in n.output)
    feeds = [{g.input[0].name: x} for x in _samples(16, 1)]
    sigmoid.output[0] = scores + "_float"
    g.initializer.extend([numpy_helper.from_array(np.array(0.05, np.float32), "coarse_s"),
                          numpy_helper.from_array(np.array(0, np.uint8), "coarse_z")])
    g.node.extend([helper.make_node("QuantizeLinear", [scores + "_float", "coarse_s", "coarse_z"], [scores + "_q"]),
                   helper.make_node("DequantizeLinear", [scores + "_q", "coarse_s", "coarse_z"], [scores])])
    coarse = tmp_path / "coarse.onnx"
    onnx.save(m, str(coarse))
    row = next(r for r in output_fidelity(FloatGraph(detector, feeds), coarse, feeds) if "4:7" in r["output"])
    assert row["snr_db"] > BROKEN_DB + 3, "not collapsed: the collapse line alone let it pass"
    assert row["salient_snr_db"] < DEGRADED_DB - 3 and row["broken"] and row["degraded"]

    # the guard: quantizing with the sigmoid in float gives the float scores back
    def quantize_with(excluded):
        return detector if sigmoid.name in excluded else coarse

    said = []
    model, excluded, record = guard(detector, feeds, quantize_with, [], said.append)
    assert model == detector and sigmoid.name in excluded and record["broken_outputs"] == []
    why = next(k["why"] for k in record["kept_float"] if k["node"] == sigmoid.name)
    assert "4:7" in why and "values that matter" in why, why
    assert any("degraded in int8" in line for line in said), said


def test_a_broken_output_without_a_concat_keeps_its_producers_in_float(tmp_path, monkeypatch):
    """The reactive half: a collapsed output that no Concat explains is traced back to the
    compute nodes that feed it, which are kept in float until the output is healthy."""
    import edgeopt.compress.output_guard as og

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.b = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return self.a(x), self.b(x)

    onnx_path = export(TwoHeads(), ExportConfig(), _samples(1, 0)[0], out=tmp_path / "two.onnx").path
    monkeypatch.setattr(og, "BROKEN_DB", 999.0)  # every output counts as broken
    r = quantize(onnx_path, QuantizeConfig(debug_layers=0), _samples(8, 1), out=tmp_path / "q.onnx")
    m = r.record["metrics"]
    assert {k["op"] for k in m["kept_float"]} == {"Conv"} and len(m["kept_float"]) == 2
    assert all("int8 SNR" in k["why"] for k in m["kept_float"])
    assert m["compute_nodes_quantized"] == 0


def test_the_reports_worst_output_shows_unguarded_int8_losing_every_detection(detector, tmp_path):
    """Before the guard, the default quantize of a boxes + scores head left the scores one
    level; the report's per-output figure (matched detections, the worst output) says so, where cosine over
    the whole tensor did not. With the guard on, the detections are kept."""
    from edgeopt.compress.fidelity import compare_outputs
    from edgeopt.pipeline.output_quality import output_quality, parse_outputs, worst_output

    calib, held = _samples(16, 1), _samples(16, 2)
    spec = parse_outputs([{"name": "det", "kind": "boxes+scores"}])

    def outputs(path):
        s = ort.InferenceSession(str(path))
        return np.concatenate([s.run(None, {s.get_inputs()[0].name: x})[0] for x in held])

    ref = outputs(detector)
    plain = quantize(detector, QuantizeConfig(debug_layers=0, guard_outputs=False), calib, out=tmp_path / "plain.onnx")
    guarded = quantize(detector, QuantizeConfig(debug_layers=0), calib, out=tmp_path / "guarded.onnx")
    unguarded = outputs(plain.path)
    assert np.ptp(unguarded[:, 4:]) == 0 and compare_outputs(unguarded, ref, "cosine") > 0.99
    worst = worst_output(output_quality([unguarded], [ref], spec))
    assert worst["label"] == "det 0.0% matched" and worst["detections"] > 0
    assert worst_output(output_quality([outputs(guarded.path)], [ref], spec))["value"] > 0.9
