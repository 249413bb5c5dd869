"""The error contract, command by command: every bad input gives exit 2, one line on stderr that
names what was wrong, no traceback, and no output left behind."""

import json

import numpy as np
import pytest
import torch

from edgeopt.pipeline.cli import main
from helpers import example_inputs, listing, tiny_conv_net


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    import edgeopt.compile as eoc
    import edgeopt.compress as ec

    fp32 = eoc.export(tiny_conv_net(), None, example_inputs(), out=d / "fp32.onnx").path
    ec.quantize(fp32, None, [example_inputs(seed=s) for s in range(2)], out=d / "int8.onnx")
    (d / "truncated.onnx").write_bytes(fp32.read_bytes()[:200])
    (d / "model.pt").write_bytes(b"\x80\x04not really a pickle")
    (d / "a_file").write_text("x")
    np.save(d / "calib.npy", np.stack([example_inputs(seed=s)[0] for s in range(4)]))
    np.save(d / "wrong.npy", np.zeros((4, 3, 5, 5), np.float32))
    (d / "calib.txt").write_text("1 2 3")
    torch.save(torch.nn.Linear(3, 3).state_dict(), d / "other.pth")
    (d / "report.json").write_text(json.dumps({"schema": 1, "variants": []}))
    (d / "schema2.json").write_text(json.dumps({"schema": 2, "variants": []}))
    recipe = ("model: helpers:tiny_conv_net\ntask: random\ninput_shape: [1, 1, 8, 8]\n"
              "variants: {fp32: []}\ntargets: [{runtime: onnxruntime}]\n")
    (d / "unknown_key.yaml").write_text(recipe + "colour: blue\n")
    (d / "unknown_task.yaml").write_text(recipe.replace("task: random", "task: no_such_task"))
    (d / "bad_target.yaml").write_text(recipe.replace("{runtime: onnxruntime}", "{runtime: tvm, target: cpu9}"))
    (d / "bad_factory.yaml").write_text(recipe.replace("helpers:tiny_conv_net", "helpers:raises"))
    (d / "bad_step.yaml").write_text(recipe.replace("{fp32: []}", "{p: [{prune: {amount: 2}}]}"))
    return d


OUT = "{d}/out"
CASES = [
    # (argv, words the one-line message must contain)
    (["export", "{d}/missing.pt2", "--out", OUT], "does not exist"),
    (["export", "{d}/fp32.onnx", "--out", OUT], "is an ONNX model"),
    (["export", "zoo:no_such_model", "--out", OUT], "no_such_model"),
    (["export", "helpers:no_such_factory", "--out", OUT], "has no attribute"),
    (["export", "no_such_module_xyz:make", "--out", OUT], "cannot import module"),
    (["export", "{d}/model.pt", "--out", OUT], "never unpickles"),
    (["export", "helpers:tiny_conv_net", "--input-shape", "1,3,8,8", "--out", OUT], "rejects an input of shape"),
    (["export", "helpers:tiny_conv_net", "--input-shape", "1,x", "--out", OUT], "malformed"),
    (["export", "helpers:tiny_conv_net", "--opset", "11", "--out", OUT], "opset must be"),
    (["export", "helpers:tiny_conv_net", "--out", "{d}/a_file/m.onnx"], "is a file"),
    (["export", "helpers:unexportable", "--out", OUT], "linalg_eig in module 'inner'"),
    (["export", "helpers:needs_args", "--out", OUT], "needs argument(s) width"),
    (["export", "helpers:raises", "--out", OUT], "weights server unreachable"),
    (["export", "helpers:not_a_module", "--out", OUT], "expected a torch.nn.Module"),
    (["export", "helpers:tiny_conv_net", "--weights", "{d}/missing.pth", "--out", OUT], "missing.pth"),
    (["export", "helpers:tiny_conv_net", "--weights", "{d}/other.pth", "--out", OUT], "does not match TinyConvNet"),
    (["compress", "prune", "helpers:tiny_conv_net", "--amount", "1.5", "--out", OUT], "amount must be"),
    (["compress", "prune", "helpers:tiny_conv_net", "--amount", "-0.1", "--out", OUT], "amount must be"),
    (["compress", "prune", "helpers:tiny_conv_net", "--amount", "lots", "--out", OUT], "invalid float value"),
    (["compress", "lowrank", "helpers:tiny_conv_net", "--out", OUT], "one of"),
    (["compress", "lowrank", "helpers:tiny_conv_net", "--energy", "2", "--out", OUT], "energy"),
    (["compress", "quantize", "{d}/missing.onnx", "--calibration-data", "{d}/calib.npy", "--out", OUT], "does not exist"),
    (["compress", "quantize", "{d}/truncated.onnx", "--calibration-data", "{d}/calib.npy", "--out", OUT], "truncated.onnx"),
    (["compress", "quantize", "{d}/fp32.onnx", "--out", OUT], "needs --calibration-data"),
    (["compress", "quantize", "{d}/fp32.onnx", "--calibration-data", "{d}/calib.txt", "--out", OUT], "expected task:NAME or a .npy"),
    (["compress", "quantize", "{d}/fp32.onnx", "--calibration-data", "{d}/wrong.npy", "--out", OUT], "shape"),
    (["compress", "quantize", "{d}/fp32.onnx", "--calibration-data", "{d}/calib.npy", "--max-accuracy-drop", "0.01",
      "--out", OUT], "need --eval-data"),
    (["compress", "quantize", "{d}/fp32.onnx", "--calibration-data", "{d}/calib.npy", "--max-accuracy-drop", "0.01",
      "--eval-data", "{d}/calib.npy", "--out", OUT], "needs labels"),
    (["compress", "quantize", "{d}/int8.onnx", "--calibration-data", "{d}/calib.npy", "--out", OUT], "already quantized"),
    (["compress", "quantize", "{d}/fp32.onnx", "--method", "bogus", "--calibration-data", "{d}/calib.npy",
      "--out", OUT], "method must be one of"),
    (["compile", "{d}/fp32.onnx", "--target", "cpu9", "--out", OUT], "unknown target 'cpu9'"),
    (["compile", "{d}/fp32.onnx", "--target", "{{\"kind\": ", "--out", OUT], "malformed"),
    (["compile", "{d}/missing.onnx", "--out", OUT], "does not exist"),
    (["compile", "{d}/fp32.onnx", "--precision", "fp16", "--out", OUT], "precision 'fp16' on a CPU"),
    (["compile", "{d}/fp32.onnx", "--precision", "bf16", "--target", "cpu:generic", "--out", OUT],
     "precision 'bf16' on a CPU needs avx512_bf16"),
    (["compile", "{d}/fp32.onnx", "--precision", "int4", "--out", OUT], "precision must be one of fp32, fp16, bf16, auto, got 'int4'"),
    (["compile", "{d}/fp32.onnx", "--tune-tracker", "127.0.0.1:9190", "--out", OUT], "tune_tracker and key go together"),
    (["compile", "{d}/fp32.onnx", "--tune-tracker", "h:1", "--tune-key", "k", "--out", OUT], "tune_tracker is for tuning"),
    (["bench", "{d}/fp32.onnx", "--runtime", "tflite"], "unknown runtime 'tflite'"),
    (["bench", "{d}/missing.onnx"], "does not exist"),
    (["bench", "{d}/truncated.onnx"], "truncated.onnx"),
    (["bench", "{d}/fp32.onnx", "--emulate", "qemu"], "--emulate qemu needs --runtime native"),
    (["bench", "{d}/fp32.onnx", "--weights", "{d}/other.pth"], "--weights goes with a torch MODEL"),
    (["run", "{d}/missing.yaml", "--out", OUT], "does not exist"),
    (["run", "{d}/unknown_key.yaml", "--out", OUT], "unknown key 'colour'"),
    (["run", "{d}/unknown_task.yaml", "--out", OUT], "unknown task 'no_such_task'"),
    (["run", "{d}/bad_target.yaml", "--out", OUT], "unknown target 'cpu9'"),
    (["run", "{d}/bad_factory.yaml", "--out", OUT], "weights server unreachable"),
    (["run", "{d}/bad_step.yaml", "--out", OUT], "amount must be"),
    (["check", "{d}/report.json", "--baseline", "{d}/missing.json"], "does not exist"),
    (["check", "{d}/schema2.json", "--baseline", "{d}/report.json"], "schema 2"),
    (["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize("argv, words", CASES, ids=[" ".join(c[0][:2]) + f"-{i}" for i, c in enumerate(CASES)])
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(files, argv, words, capsys):
    before = listing(files)
    argv = [a.format(d=files) for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse usage errors
        code = e.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert words in lines[0], lines[0]
    assert listing(files) == before, "output left behind"


def test_the_catalogue_is_at_least_thirty_cases():
    assert len(CASES) >= 30


def test_debug_shows_the_traceback(files, capsys):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "bench", str(files / "missing.onnx")])
