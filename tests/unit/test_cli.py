"""The edgeopt CLI: exit codes 0/1/2, messages, and no output left behind on bad input."""

import json

import pytest

from helpers import edgeopt_cli, listing


def test_export_zoo_model_writes_file_and_reports_parity(tmp_path):
    r = edgeopt_cli("export", "zoo:digits_cnn", "--out", tmp_path / "d.onnx")
    assert r.returncode == 0, r.stderr
    assert "parity vs torch" in r.stdout and "pass" in r.stdout
    assert listing(tmp_path) == ["d.onnx"]


def test_export_factory_with_input_shape(tmp_path):
    r = edgeopt_cli("export", "helpers:tiny_conv_net", "--input-shape", "1,1,8,8",
                    "--out", tmp_path / "t.onnx")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("model, message", [
    ("missing/model.pt2", "model file 'missing/model.pt2' does not exist"),
    ("no_such_module:factory", "cannot import module 'no_such_module'"),
    ("helpers:no_such_factory", "module 'helpers' has no attribute 'no_such_factory'"),
    ("helpers:REPO", "'REPO' is not callable"),
])
def test_export_bad_model_spec_exits_2(tmp_path, model, message):
    r = edgeopt_cli("export", model, "--out", tmp_path / "out" / "m.onnx", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists() or listing(tmp_path / "out") == []


def test_export_pickle_is_refused(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"\x80\x04pickle")
    r = edgeopt_cli("export", tmp_path / "model.pt", "--out", tmp_path / "m.onnx")
    assert r.returncode == 2
    assert "never unpickles" in r.stderr and "torch.export.save" in r.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_export_wrong_input_shape_exits_2_without_output(tmp_path):
    r = edgeopt_cli("export", "zoo:digits_cnn", "--input-shape", "1,3,32,32", "--out", tmp_path / "x.onnx")
    assert r.returncode == 2
    assert "rejects an input of shape (1, 3, 32, 32)" in r.stderr
    assert listing(tmp_path) == []


def test_export_malformed_shape_exits_2(tmp_path):
    r = edgeopt_cli("export", "zoo:digits_cnn", "--input-shape", "1,a,32", "--out", tmp_path / "x.onnx")
    assert r.returncode == 2 and "input shape '1,a,32' is malformed" in r.stderr


def test_export_unexportable_op_names_op_and_module(tmp_path):
    r = edgeopt_cli("export", "helpers:unexportable", "--input-shape", "1,1,4,4", "--out", tmp_path / "u.onnx")
    assert r.returncode == 2
    assert "linalg_eig" in r.stderr and "'inner'" in r.stderr
    assert listing(tmp_path) == []


def test_export_parity_failure_exits_1(tmp_path):
    r = edgeopt_cli("export", "helpers:drifting_model", "--out", tmp_path / "p.onnx")
    assert r.returncode == 1, r.stderr
    assert "max relative error" in r.stderr
    assert listing(tmp_path) == []


def test_bench_onnx_on_onnxruntime_and_json(tmp_path):
    assert edgeopt_cli("export", "zoo:digits_cnn", "--out", tmp_path / "d.onnx").returncode == 0
    r = edgeopt_cli("bench", tmp_path / "d.onnx", "--runtime", "onnxruntime", "--threads", "1",
                    "--warmup", "1", "--repeat", "5", "--json", tmp_path / "bench.json")
    assert r.returncode == 0, r.stderr
    assert "median" in r.stdout and "machine:" in r.stdout
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["latency_ms"]["n"] == 5 and data["machine"]["threads"] == 1


def test_bench_zoo_model_on_torch(tmp_path):
    r = edgeopt_cli("bench", "zoo:digits_cnn", "--warmup", "1", "--repeat", "3")
    assert r.returncode == 0, r.stderr
    assert "runtime torch" in r.stdout


def test_bench_truncated_onnx_exits_2(tmp_path):
    assert edgeopt_cli("export", "zoo:digits_cnn", "--out", tmp_path / "d.onnx").returncode == 0
    data = (tmp_path / "d.onnx").read_bytes()
    (tmp_path / "bad.onnx").write_bytes(data[: len(data) // 3])
    r = edgeopt_cli("bench", tmp_path / "bad.onnx")
    assert r.returncode == 2
    assert "not a valid ONNX model" in r.stderr and "bad.onnx" in r.stderr


def test_bench_unknown_runtime_and_missing_file_exit_2(tmp_path):
    r = edgeopt_cli("bench", "zoo:digits_cnn", "--runtime", "tflite")
    assert r.returncode == 2
    assert "unknown runtime 'tflite'; expected one of torch, onnxruntime, openvino, executorch, tvm, native" in r.stderr
    r = edgeopt_cli("bench", tmp_path / "missing.onnx")
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_usage_error_exits_2():
    r = edgeopt_cli("export")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "required: MODEL, --out" in lines[0]
    assert "see edgeopt export --help" in lines[0]


def test_compress_quantize_with_task_calibration(tmp_path):
    assert edgeopt_cli("export", "zoo:digits_cnn", "--out", tmp_path / "fp32").returncode == 0
    r = edgeopt_cli("compress", "quantize", tmp_path / "fp32", "--calibration-data", "task:digits",
                    "--method", "minmax", "--out", tmp_path / "int8")
    assert r.returncode == 0, r.stderr
    assert "compute nodes int8" in r.stdout
    assert "costliest quantized layers" in r.stdout  # the per-layer debugger's ranking
    manifest = json.loads((tmp_path / "int8" / "manifest.json").read_text())
    assert [h["name"] for h in manifest["history"]] == ["export", "quantize"]
    assert manifest["history"][-1]["metrics"]["costliest_layers"]


def test_compress_quantize_bad_inputs_exit_2(tmp_path):
    import numpy as np

    assert edgeopt_cli("export", "zoo:digits_cnn", "--out", tmp_path / "m.onnx").returncode == 0
    np.save(tmp_path / "empty.npy", np.zeros((0, 1, 32, 32), np.float32))
    np.save(tmp_path / "wrong.npy", np.zeros((4, 1, 16, 16), np.float32))
    cases = [
        (["--calibration-data", str(tmp_path / "empty.npy")], "calibration data is empty"),
        (["--calibration-data", str(tmp_path / "wrong.npy")], "calibration sample 0: input 'input' has shape (1, 1, 16, 16)"),
        ([], "static quantization needs --calibration-data"),
        (["--calibration-data", "task:digits", "--method", "kl"], "method must be one of minmax, entropy, percentile, mean_minmax; got 'kl'"),
        (["--calibration-data", "task:digits", "--nodes-to-exclude", "node_nope"], "has no node named 'node_nope'; its compute nodes are"),
    ]
    for extra, message in cases:
        r = edgeopt_cli("compress", "quantize", tmp_path / "m.onnx", "--out", tmp_path / "q.onnx", *extra)
        assert r.returncode == 2, (extra, r.stderr)
        assert message in r.stderr, (extra, r.stderr)
        assert not (tmp_path / "q.onnx").exists()
    assert listing(tmp_path) == ["empty.npy", "m.onnx", "wrong.npy"]


def test_compress_quantize_two_inputs_from_npz(tmp_path):
    """A model with two inputs takes its calibration data as a .npz, one array per input."""
    import numpy as np
    import torch

    from edgeopt.compile import export

    class TwoInputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc, self.head = torch.nn.Conv2d(1, 4, 3), torch.nn.Linear(6, 4), torch.nn.Linear(8, 3)

        def forward(self, image, vector):
            return self.head(torch.cat([self.conv(image).mean((2, 3)), torch.relu(self.fc(vector))], 1))

    x = (torch.randn(1, 1, 8, 8), torch.randn(1, 6))
    fp32 = export(TwoInputs().eval(), None, x, out=tmp_path / "two.onnx").path
    import onnx

    names = [i.name for i in onnx.load(str(fp32)).graph.input]
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", **{names[0]: rng.standard_normal((16, 1, 8, 8)).astype(np.float32),
                                        names[1]: rng.standard_normal((16, 6)).astype(np.float32)})
    np.savez(tmp_path / "wrong.npz", other=np.zeros((4, 6), np.float32))
    r = edgeopt_cli("compress", "quantize", fp32, "--calibration-data", tmp_path / "calib.npz",
                    "--out", tmp_path / "q.onnx")
    assert r.returncode == 0, r.stderr
    assert "compute nodes int8" in r.stdout and (tmp_path / "q.onnx").exists()
    r = edgeopt_cli("compress", "quantize", fp32, "--calibration-data", tmp_path / "wrong.npz",
                    "--out", tmp_path / "q2.onnx")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert f"calibration data holds arrays ['other']; the model takes inputs {names}" in r.stderr
    assert not (tmp_path / "q2.onnx").exists()


def test_compile_cli_targets_and_bad_inputs(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    assert edgeopt_cli("export", "zoo:digits_cnn", "--out", tmp_path / "m.onnx").returncode == 0
    r = edgeopt_cli("compile", tmp_path / "m.onnx", "--target", "cpu", "--out", tmp_path / "cpu")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cpu" / "model.so").exists()
    r = edgeopt_cli("compile", tmp_path / "m.onnx", "--target", "riscv", "--out", tmp_path / "x")
    assert r.returncode == 2 and "unknown target 'riscv'" in r.stderr
    r = edgeopt_cli("compile", tmp_path / "m.onnx", "--target", '{"kind": "llvm", "mcpu": "no-such-cpu"}',
                    "--out", tmp_path / "x")
    assert r.returncode == 2 and "TVM rejects target" in r.stderr
    # An op the Relax ONNX frontend has no converter for: named with its node.
    node = helper.make_node("QLinearConv", [f"i{k}" for k in range(8)], ["y"], name="the_qconv")
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info(f"i{k}", TensorProto.FLOAT, [1]) for k in range(8)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "q.onnx")
    r = edgeopt_cli("compile", tmp_path / "q.onnx", "--out", tmp_path / "x")
    assert r.returncode == 2 and "unsupported op(s) QLinearConv (node 'the_qconv')" in r.stderr
    assert not (tmp_path / "x").exists()
