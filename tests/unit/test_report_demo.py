"""Reports and the end-to-end demo."""

import importlib.util
import json

import pytest

from edgeopt.pipeline.report_schema import make_report, pareto_flags
from edgeopt.pipeline.report_text import markdown, text_table
from edgeopt.core.errors import InputError
from helpers import edgeopt_cli


def _variant(runtime, median, acc):
    return {"name": "fp32", "steps": [], "runtime": runtime, "target": "cpu", "size_bytes": 1000,
            "params": 10, "flops": 2_000_000, "accuracy": acc, "agreement": 1.0,
            "latency_ms": {"median": median, "p90": median, "min": median, "n": 3}}


def test_pareto_front():
    assert pareto_flags([(1.0, 0.9), (2.0, 0.95), (3.0, 0.9), (1.0, 0.8)]) == [True, True, False, False]


def test_make_report_ratios_against_reference():
    r = make_report([_variant("torch", 4.0, 0.98), _variant("onnxruntime", 2.0, 0.98)],
                    {"cpu": "x", "threads": 2, "versions": {}}, {"name": "digits", "metric": "top1"},
                    "fp32/onnxruntime")
    ratios = {v["runtime"]: v["latency_ratio"] for v in r["variants"]}
    assert ratios == {"torch": 2.0, "onnxruntime": 1.0}
    assert [v["pareto"] for v in r["variants"]] == [False, True]
    assert r["schema"] == 1
    assert "| fp32 | onnxruntime |" in markdown(r)
    assert text_table(r).splitlines()[2].split()[:2] == ["fp32", "onnxruntime"]
    with pytest.raises(InputError, match="reference variant 'fp32/tvm'"):
        make_report([_variant("torch", 1.0, 0.9)], {}, None, "fp32/tvm")


def _check_demo_report(out, min_accuracy: float) -> dict:
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == 1 and report["reference"] == "fp32/onnxruntime"
    assert report["machine"]["cpu"] and report["machine"]["versions"]["torch"].startswith("2.13")
    fp32 = {v["runtime"]: v for v in report["variants"] if v["name"] == "fp32"}
    # the demo adds OpenVINO where its optional package is installed (pipeline.demo.with_installed_peers)
    peers = {"openvino"} if importlib.util.find_spec("openvino") is not None else set()
    assert set(fp32) == {"torch", "onnxruntime", "tvm"} | peers
    for v in fp32.values():
        assert v["accuracy"] >= min_accuracy
        assert v["size_bytes"] > 0 and v["flops"] > 0 and v["latency_ms"]["n"] == 10
    # OpenVINO may choose bf16 by itself: its agreement is measured, not expected to be exact
    exact = [v for v in fp32.values() if not str(v.get("target", "")).endswith(("/bf16", "/f16"))]
    assert all(v["agreement"] == 1.0 for v in exact)
    assert len({v["predictions_sha256"] for v in exact}) == 1
    assert fp32["onnxruntime"]["latency_ratio"] == 1.0
    names = {v["name"] for v in report["variants"]}
    assert names == {"fp32", "lowrank+kd", "pruned+kd", "int8", "pruned+kd+int8"}
    for f in ("report.md", "pareto.png", "index.html"):
        assert (out / f).stat().st_size > 0
    return report


# -- a report you can hand to someone ---------------------------------------------------------

MACHINE = {"cpu": "Example CPU 9000", "machine": "x86_64", "cores": 8, "threads": 2, "python": "3.11.9",
           "versions": {"torch": "2.13.0", "onnxruntime": "1.23.0"}}
META = {"model": "zoo:digits_cnn", "recipe": "benchmarks/digits.yaml", "created": "2026-11-27T04:00:00+00:00"}
HISTORY = [
    {"name": "prune", "config": {"amount": 0.5}, "metrics": {
        "params_before": 155898, "params_after": 39426, "flops_before": 5_300_000, "flops_after": 1_400_000,
        "groups": [{"layers": ["conv1"], "channels_before": 32, "channels_after": 16}], "left_whole": []}},
    {"name": "lowrank", "config": {}, "metrics": {
        "params_before": 39426, "params_after": 20000, "flops_before": 1_400_000, "flops_after": 1_000_000,
        "layers": [{"layer": "fc1", "kind": "linear", "ranks": [12], "full_ranks": [64]}], "skipped": []}},
    {"name": "export", "config": {}, "metrics": {"opset": 17, "size_bytes": 90000, "parity": {"max_rel": 1e-6}}},
    {"name": "quantize", "config": {}, "metrics": {
        "size_bytes_before": 90000, "size_bytes_after": 30000, "size_ratio": 0.33, "compute_nodes_quantized": 5,
        "compute_nodes_total": 6, "nodes_in_float": ["/fc2/Gemm"], "fallback": [],
        "costliest_layers": ["/conv2/Conv", "/fc1/Gemm"], "costliest_float_share": 0.62}},
]


def _entry(name, runtime, median, acc, **extra):
    return {"name": name, "steps": [], "runtime": runtime, "target": "cpu", "size_bytes": 1000,
            "params": 10, "flops": 2_000_000, "accuracy": acc, "agreement": 1.0,
            "latency_ms": {"median": median, "p90": median, "min": median, "n": 3}, **extra}


def _failed(name="int8", runtime="tvm", error="TVM build failed:\n  no schedule for qlinearconv"):
    return {"name": name, "runtime": runtime, "target": "cpu", "status": "failed", "error": error,
            "steps": [{"quantize": {"method": "minmax"}}]}


def _full_report(resumed=False):
    steps = [{"prune": {"amount": 0.5}}, {"lowrank": {}}, {"quantize": {}}]
    return make_report([_entry("fp32", "onnxruntime", 2.0, 0.98),
                        _entry("small+int8", "onnxruntime", 0.5, 0.97, steps=steps, history=HISTORY,
                               resumed=resumed, params=5, flops=1_000_000, size_bytes=400),
                        _failed()], MACHINE, {"name": "digits", "metric": "top1"}, "fp32/onnxruntime", META)


def test_failed_variants_are_kept_but_not_measured_or_ranked():
    r = _full_report()
    failed = [v for v in r["variants"] if v.get("status") == "failed"]
    assert len(failed) == 1 and "latency_ratio" not in failed[0] and "pareto" not in failed[0]
    assert failed[0]["error"] == "TVM build failed: no schedule for qlinearconv"  # one line
    assert [v["pareto"] for v in r["variants"] if "pareto" in v] == [True, True]
    table = text_table(r)
    assert "failed (1, not measured):" in table
    assert "int8/tvm (cpu): TVM build failed: no schedule for qlinearconv" in table
    measured = table.split("\n\n")[0].splitlines()[2:]
    assert sorted(line.split()[0] for line in measured) == ["fp32", "small+int8"]
    md = markdown(r)
    assert "## Failed variants" in md and "`int8/tvm` (cpu): TVM build failed" in md
    json.dumps(r)  # report.json keeps it


def test_reference_is_never_a_failed_variant():
    entries = [_failed("fp32", "onnxruntime", "export failed"), _entry("fp32", "torch", 3.0, 0.9),
               _entry("int8", "onnxruntime", 1.0, 0.9)]
    assert make_report(entries, MACHINE, None, None)["reference"] == "fp32/torch"
    with pytest.raises(InputError, match="'fp32/onnxruntime' \\(it failed\\)"):
        make_report(entries, MACHINE, None, "fp32/onnxruntime")
    r = make_report([_failed()], MACHINE, None, None)
    assert r["reference"] is None and "every variant failed" in markdown(r)
    assert "int8/tvm (cpu)" in text_table(r)


@pytest.mark.parametrize("entry, message", [
    ({**_failed(), "error": " \n"}, "has no 'error' reason"),
    ({**_failed(), "status": "broken"}, "status must be 'ok' or 'failed'"),
    ({"name": "fp32", "runtime": "onnxruntime"}, "no positive latency_ms.median"),
    ({"runtime": "onnxruntime"}, "needs 'name' and 'runtime'"),
])
def test_bad_entries_raise_input_error(entry, message):
    with pytest.raises(InputError, match=message):
        make_report([_entry("fp32", "onnxruntime", 1.0, 0.9), entry], MACHINE, None, "fp32/onnxruntime")


def test_meta_defaults_and_validation():
    from datetime import datetime

    r = make_report([_entry("fp32", "onnxruntime", 1.0, 0.9)], MACHINE, None, "fp32/onnxruntime")
    assert datetime.fromisoformat(r["meta"]["created"]).tzinfo is not None
    with pytest.raises(InputError, match="ISO 8601"):
        make_report([_entry("fp32", "onnxruntime", 1.0, 0.9)], MACHINE, None, "fp32/onnxruntime",
                    meta={"created": "yesterday"})


def test_markdown_names_model_recipe_machine_and_what_steps_changed():
    md = markdown(_full_report())
    for words in ("zoo:digits_cnn", "benchmarks/digits.yaml", "2026-11-27T04:00:00+00:00",
                  "Example CPU 9000", "2 threads", "torch 2.13.0", "python 3.11.9",
                  "every row measured in the same run",
                  "prune(amount=0.5) -> lowrank -> quantize",
                  "params 155.90k -> 39.43k (-75%)", "FLOPs 5.30M -> 1.40M (-74%)", "conv1 32->16",
                  "fc1 [12] of [64]", "kept in float: /fc2/Gemm", "5 of 6 compute nodes quantized",
                  "costliest layers (debugger): /conv2/Conv, /fc1/Gemm (in float together they remove 62%",
                  "size 87.9 KB -> 29.3 KB (-67%)",
                  "against fp32/onnxruntime (no steps): params 10 -> 5 (-50%); FLOPs 2.00M -> 1.00M (-50%); "
                  "size 1000 B -> 400 B (-60%)"):
        assert words in md, words


def test_resumed_rows_are_labelled_not_called_same_run():
    r = _full_report(resumed=True)
    md, table = markdown(r), text_table(r)
    assert "same run" not in md
    assert "1 of 2 rows were timed in an earlier run of the same recipe (resumed: small+int8/onnxruntime)" in md
    rows = {line.split()[0]: line for line in table.splitlines()[2:4]}
    assert rows["small+int8"].rstrip().endswith("earlier run")
    assert rows["fp32"].rstrip().endswith("this run")


class _Links(__import__("html.parser").parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("src", "href", "srcset", "data", "action", "poster"):
                self.links.append((tag, k, v or ""))
            if k == "id":
                self.ids.add(v)


def test_index_html_stands_alone(tmp_path):
    from edgeopt.pipeline.report_html import write_report

    r = _full_report(resumed=True)
    write_report(r, tmp_path, plot=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html", "pareto.png", "report.json",
                                                          "report.md"]  # no temporary files left
    page = (tmp_path / "index.html").read_text()
    parser = _Links()
    parser.feed(page)
    assert any(v.startswith("data:image/png;base64,") for _, k, v in parser.links if k == "src")
    for tag, attr, value in parser.links:
        if value.startswith("#"):
            assert value[1:] in parser.ids, value
        else:
            assert value.startswith("data:"), (tag, attr, value[:80])
    assert "url(" not in page and "@import" not in page
    for words in ("zoo:digits_cnn", "benchmarks/digits.yaml", "2026-11-27T04:00:00+00:00", "Example CPU 9000",
                  "2 threads", "onnxruntime 1.23.0", "Failed variants", "no schedule for qlinearconv",
                  "earlier run", "kept in float: /fc2/Gemm", "conv1 32-&gt;16"):
        assert words in page, words
    assert "same run" not in page
    saved = json.loads((tmp_path / "report.json").read_text())
    assert [v.get("status", "ok") for v in saved["variants"]] == ["ok", "ok", "failed"]
    assert saved["meta"]["recipe"] == "benchmarks/digits.yaml"


def _label_numbers(text):
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_crowded_pareto_plot_labels_never_overlap(seed):
    import itertools
    import random

    from matplotlib.text import Text
    import matplotlib.pyplot as plt

    from edgeopt.pipeline.report_figures import pareto_figure

    rng = random.Random(seed)
    entries = [_entry(f"variant-{i}", ("torch", "onnxruntime", "tvm")[i % 3], 1.0 + rng.random() * 0.03,
                      0.97 + rng.random() * 0.001, size_bytes=1000 + 500 * i) for i in range(12)]
    entries += [_entry("same-a", "onnxruntime", 2.0, 0.98), _entry("same-b", "tvm", 2.0, 0.98), _failed()]
    fig = pareto_figure(make_report(entries, MACHINE, None, None))
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        labels = [t for t in fig.axes[0].texts if t.get_gid() == "pareto-label"]
        boxes = [Text.get_window_extent(t, renderer) for t in labels]
        for a, b in itertools.combinations(boxes, 2):
            assert not a.overlaps(b)
        frame = fig.axes[0].get_window_extent(renderer)
        assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
        numbers = sorted(n for t in labels for n in _label_numbers(t.get_text()))
        assert numbers == list(range(1, 15))  # every plotted variant numbered once; the failed one not
        key = "\n".join(t.get_text() for t in fig.texts)
        assert "not plotted: int8/tvm (failed)" in key and "14 " in key
    finally:
        plt.close(fig)


@pytest.mark.slow  # the whole digits study (training, 5 variants, 3 runtimes, untuned TVM): minutes
def test_digits_demo_writes_the_full_study(tmp_path, capsys):
    from edgeopt.pipeline.demo import DIGITS_RECIPE, run_demo

    run_demo(out=tmp_path / "demo", warmup=2, repeat=10, recipe=DIGITS_RECIPE)
    assert "fp32 top-1 predictions identical across torch, onnxruntime, tvm: yes" in capsys.readouterr().out
    _check_demo_report(tmp_path / "demo", 0.97)


def test_demo_falls_back_to_digits_without_fashion_mnist(tmp_path):
    from edgeopt.pipeline.demo import DEMO_RECIPE, DIGITS_RECIPE, demo_recipe

    text, note = demo_recipe(data_dir=tmp_path)
    assert text == DIGITS_RECIPE and "dataset-fashion-mnist" in note and note.endswith("digits study instead.")
    if _fashion_installed():
        assert demo_recipe() == (DEMO_RECIPE, None)


def _fashion_installed() -> bool:
    from edgeopt.pipeline.tasks import fashion_mnist_files

    try:
        fashion_mnist_files()
        return True
    except InputError:
        return False


@pytest.mark.slow  # the Fashion-MNIST study: trains on 54,744 images and measures 10,000 (minutes)
@pytest.mark.skipif(not _fashion_installed(), reason="Fashion-MNIST is not installed (`make data`)")
def test_demo_cli_runs_the_fashion_mnist_study(tmp_path):
    import re

    r = edgeopt_cli("demo", "--out", tmp_path / "demo", "--warmup", "2", "--repeat", "10")
    assert r.returncode == 0, r.stderr
    # OpenVINO joins the runtimes that ran fp32 where it is installed and chose f32
    assert re.search(r"fp32 top-1 predictions identical across torch, onnxruntime, tvm(, openvino)?: yes", r.stdout)
    report = _check_demo_report(tmp_path / "demo", 0.91)
    assert report["task"]["name"] == "fashion_mnist"
    # Compression shows: the variants do not all score the same.
    assert len({round(v["accuracy"], 4) for v in report["variants"]}) > 1


def test_a_latency_axis_over_two_decades_labels_more_than_its_decades():
    """pareto.png once labelled only two ticks (0.1, 1) with most points between them."""
    import matplotlib.pyplot as plt

    from edgeopt.pipeline.report_figures import pareto_figure

    entries = [_entry(f"v{i}", "onnxruntime", ms, 0.9 + i / 100) for i, ms in
               enumerate((0.029, 0.04, 0.066, 0.09, 0.17, 0.29, 0.6, 2.4))]
    fig = pareto_figure(make_report(entries, MACHINE, None, None))
    try:
        fig.canvas.draw()
        ax = fig.axes[0]
        lo, hi = ax.get_xlim()
        shown = [t.get_text() for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]
        assert len(shown) >= 5, shown
        assert "0.05" in shown and "0.2" in shown
    finally:
        plt.close(fig)


def test_a_compile_record_is_described_in_words_not_its_raw_keys():
    from edgeopt.pipeline.report_steps import describe_record

    line = describe_record({"name": "compile", "config": {"tuned": False}, "metrics": {
        "int8_ops": 0, "kernels": "onednn", "kernels_why": "x86-64 with oneDNN installed",
        "library_ops": {"conv2d": 3, "matmul_q": 0},
        "layout_fallbacks": ["conv2d_transpose kept in NCHW: TVM lowers it in NCHW only"]}})
    assert line.startswith("compile: kernels onednn (x86-64 with oneDNN installed)")
    assert "oneDNN calls: conv2d 3" in line and "fallback: conv2d_transpose" in line
    assert "int8_ops" not in line and "kernels_why" not in line and "matmul_q" not in line
