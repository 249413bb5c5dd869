"""Exits that never lie: what a new user hit (NaN data, a read-only --out, an unknown target kind,
a list-output model, Ctrl-C during tuning) and the small papercuts (abbreviated options, --version,
the zoo in the help, a task .npz as calibration data, unstructured pruning's summary, the RPC
error's line, pruning across a fixed reshape). Bad input: exit 2, one line, nothing left behind;
an interrupt: exit 130, no traceback, no worker left."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from edgeopt.pipeline.cli import build_parser, main
from helpers import REPO, edgeopt_cli, example_inputs, listing, tiny_conv_net

# a folder nothing can be written in: chmod works for a plain user, not for root (the probe
# must then meet a file system that refuses: sysfs)
READ_ONLY = Path("/sys/edgeopt-exits-test") if os.geteuid() == 0 else None


class ListOutput(torch.nn.Module):
    """Returns [scores, scores * 2]: fine to measure (first output), wrong to train on."""

    input_shape = (1, 1, 8, 8)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(64, 3)

    def forward(self, x):
        y = self.fc(x.flatten(1))
        return [y, y * 2]


def list_output():
    return ListOutput().eval()


class FixedReshape(torch.nn.Module):
    """Reshapes to sizes written as numbers: pruning conv2's channels breaks it, skip keeps it."""

    input_shape = (1, 1, 8, 8)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 64, 3)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv(x))))
        return self.fc(x.reshape(1, 512))


def fixed_reshape():
    return FixedReshape().eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("exits")
    import edgeopt.compile as eoc

    eoc.export(tiny_conv_net(), None, example_inputs(), out=d / "fp32.onnx")
    samples = np.concatenate([example_inputs(seed=s) for s in range(4)])
    np.save(d / "all_nan.npy", np.full_like(samples, np.nan))
    one = samples.copy()
    one[2, 0, 3, 3] = np.nan
    np.save(d / "one_nan.npy", one)
    np.savez(d / "one_nan_by_input.npz", input=one)
    inf = samples.copy()
    inf[1, 0, 0, 0] = np.inf
    np.save(d / "inf.npy", inf)
    np.save(d / "calib.npy", samples)
    rng = np.random.default_rng(0)
    np.savez(d / "task.npz", x=rng.standard_normal((60, 1, 8, 8)).astype(np.float32), y=rng.integers(0, 3, 60))
    np.savez(d / "empty.npz")
    np.savez(d / "other_names.npz", images=samples)
    (d / "notes.txt").write_text("hello")  # pickle reads "h" as an opcode: KeyError
    recipe = ("model: test_exits:list_output\ntask: {task}\ninput_shape: [1, 1, 8, 8]\n"
              "variants: {{fp32: []}}\ntargets: [{{runtime: onnxruntime}}]\n")
    (d / "list_labelled.yaml").write_text(recipe.format(task=d / "task.npz"))
    (d / "ok.yaml").write_text(recipe.format(task="random").replace("test_exits:list_output",
                                                                   "helpers:tiny_conv_net"))
    (d / "recipes").mkdir()
    return d


def run_cli(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, [ln for ln in captured.err.splitlines() if ln.strip()], captured.out


def unwritable(files, name):
    if READ_ONLY is not None:
        return str(READ_ONLY / name)
    ro = files / "read_only"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    return str(ro / name)


OUT = "{d}/out"
CASES = [
    # (argv, words the one line must contain): the cases, then more bad inputs
    (["compress", "quantize", "{d}/fp32.onnx", "--calibration-data", "{d}/all_nan.npy", "--out", OUT], "256 NaN"),
    (["compress", "quantize", "{d}/fp32.onnx", "--calibration-data", "{d}/one_nan.npy", "--out", OUT], "1 NaN"),
    (["compress", "quantize", "{d}/fp32.onnx", "--calibration-data", "{d}/one_nan_by_input.npz", "--out", OUT],
     "array 'input' holds 1 NaN"),
    (["compress", "quantize", "{d}/fp32.onnx", "--calibration-data", "{d}/inf.npy", "--out", OUT], "1 infinite"),
    (["compress", "quantize", "{d}/fp32.onnx", "--calibration-data", "{d}/calib.npy", "--eval-data",
      "{d}/one_nan.npy", "--min-agreement", "0.9", "--out", OUT], "1 NaN"),
    (["compile", "{d}/fp32.onnx", "--target", '{{"kind": "vulkan"}}', "--out", OUT], "target kind 'vulkan'"),
    (["compile", "{d}/fp32.onnx", "--target", '{{"kind": "opencl"}}', "--out", OUT], "expected one of llvm, cuda"),
    (["run", "{d}/list_labelled.yaml", "--out", OUT], "returns a list of 2, not a tensor"),
    (["compress", "quantize", "{d}/fp32.onnx", "--calibration-data", "{d}/empty.npz", "--out", OUT], "holds no arrays"),
    (["compress", "quantize", "{d}/fp32.onnx", "--calibration-data", "{d}/other_names.npz", "--out", OUT],
     "named as the inputs, or x and y of a task"),
    (["compress", "prune", "test_exits:fixed_reshape", "--amount", "0.5", "--out", OUT], "with skip"),
    (["export", "helpers:tiny_conv_net", "--weights", "{d}/notes.txt", "--out", OUT], "is not a torch state dict file"),
    (["run", "{d}/recipes", "--out", OUT], "is a folder; expected a recipe .yaml"),
    (["bench", "{d}/fp32.onnx", "--json", "{d}/notes.txt/result.json"], "is a file, not a folder"),
    (["compress", "quantize", "{d}/fp32.onnx", "--calibration-data", "{d}/calib.npy", "--debug-l", "2",
      "--out", OUT], "unrecognized arguments: --debug-l"),
]


@pytest.mark.parametrize("argv, words", CASES, ids=[f"{' '.join(c[0][:2])}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(files, argv, words, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # test_exits:list_output, :fixed_reshape
    before = listing(files)
    code, lines, _ = run_cli([a.format(d=files) for a in argv], capsys)
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    assert words in lines[0], lines[0]
    assert listing(files) == before, "output left behind"


@pytest.mark.parametrize("argv", [
    ["export", "helpers:tiny_conv_net", "--out", "{ro}"],
    ["compress", "quantize", "{d}/fp32.onnx", "--calibration-data", "{d}/calib.npy", "--out", "{ro}"],
    ["compile", "{d}/fp32.onnx", "--out", "{ro}"],
    ["compile", "{d}/fp32.onnx", "--bundle", "{ro}", "--out", "{d}/out"],
    ["run", "{d}/ok.yaml", "--out", "{ro}"],
    ["bench", "{d}/fp32.onnx", "--repeat", "1", "--json", "{ro}"],
    ["demo", "--out", "{ro}"],
], ids=lambda a: " ".join(a[:2]))
def test_an_unwritable_out_is_refused_before_any_work(files, argv, capsys):
    before = listing(files)
    ro = unwritable(files, "result")
    code, lines, out = run_cli([a.format(d=files, ro=ro) for a in argv], capsys)
    assert code == 2, lines
    assert len(lines) == 1 and "cannot write in" in lines[0], lines
    assert not out, "work was done before the refusal"
    assert listing(files) == before


def test_a_task_npz_is_calibration_data_without_task_prefix(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    code, lines, out = run_cli(["compress", "quantize", "fp32.onnx", "--calibration-data", "task.npz",
                                "--out", str(files / "q")], capsys)
    assert code == 0, lines
    code, lines, out = run_cli(["compress", "prune", "helpers:tiny_conv_net", "--amount", "0.25",
                                "--calibration-data", "task.npz", "--out", str(files / "p")], capsys)
    assert code == 0, lines


def test_unstructured_prune_prints_the_sparsity(files, capsys):
    code, lines, out = run_cli(["compress", "prune", "helpers:tiny_conv_net", "--no-structured", "--amount", "0.5",
                                "--out", str(files / "sparse")], capsys)
    assert code == 0, lines
    assert "50.0% of the prunable weights set to zero" in out
    assert "fewer" not in out


def test_prune_across_a_fixed_reshape_works_with_the_skip_it_suggests(files, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    code, lines, out = run_cli(["compress", "prune", "test_exits:fixed_reshape", "--amount", "0.5",
                                "--skip", "conv2", "--out", str(files / "skipped")], capsys)
    assert code == 0, lines
    assert "conv2: listed in skip" in out


def test_version(capsys):
    from importlib.metadata import version

    code, lines, out = run_cli(["--version"], capsys)
    assert code == 0 and out.strip() == f"edgeopt {version('edgeopt')}"


def test_options_are_never_abbreviated():
    args = build_parser().parse_args(["compress", "quantize", "m.onnx", "--out", "o", "--debug"])
    assert args.debug is True and not hasattr(args, "debug_layers")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["compile", "m.onnx", "--out", "o", "--tune-tr", "4"])


def test_export_help_lists_every_zoo_model(capsys):
    from edgeopt.pipeline.zoo import ZOO

    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in ZOO), text
    assert "fashion_cnn" in text


def test_the_rpc_error_is_the_only_line(files, capsys, monkeypatch):
    """An artifact this host cannot run (a note: parity not checked) and nothing listening: the
    one line is the connection error, the note is not said before it."""
    import edgeopt.compile as eoc
    import edgeopt.pipeline.bench as pb
    from edgeopt.pipeline.farm import free_port

    art = files / "art"  # an artifact folder
    eoc.export(tiny_conv_net(), None, example_inputs(), out=art)

    def no_reference(art, x, reference, log):
        log("parity: not checked (an aarch64 artifact on this host); pass --reference MODEL.onnx")
        return None

    monkeypatch.setattr(pb, "reference_outputs", no_reference)
    code, lines, _ = run_cli(["bench", str(art), "--rpc", f"127.0.0.1:{free_port()}"], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "nothing is listening" in lines[0]


def test_recipes_doc_lists_onnx_models():
    text = (REPO / "docs" / "recipes.md").read_text()
    model_row = next(ln for ln in text.splitlines() if ln.startswith("| `model` |"))
    assert ".onnx" in model_row


def _workers_of(pid: int) -> list[psutil.Process]:
    """Processes still in the session the edgeopt process led (its workers, orphaned or not)."""
    left = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == pid:
                left.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    return left


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("to", ["process", "group"])
def test_ctrl_c_during_tuning_exits_130_cleanly(tmp_path, to):
    """SIGINT to the edgeopt process alone (a kill -INT) or to its whole group (Ctrl-C in a
    terminal) once a tuning round has started: exit 130, one line, no traceback, no worker left."""
    import edgeopt.compile as eoc

    model = eoc.export(tiny_conv_net(), None, example_inputs(), out=tmp_path / "m.onnx").path
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    exe = Path(sys.executable).with_name("edgeopt")
    p = subprocess.Popen([str(exe), "compile", str(model), "--kernels", "tvm", "--tune-trials", "64",
                          "--tune-db", str(tmp_path / "db"), "--out", str(tmp_path / "art")],
                         stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    try:
        seen = []
        for line in p.stderr:
            seen.append(line)
            if line.startswith("tuning: round 1"):
                break
        time.sleep(3)  # inside MetaSchedule: builders and runners at work
        if to == "group":
            os.killpg(p.pid, signal.SIGINT)
        else:
            os.kill(p.pid, signal.SIGINT)
        rest = p.stderr.read()
        code = p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    deadline = time.monotonic() + 10
    while _workers_of(p.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = _workers_of(p.pid)
    for w in left:  # do not leave them to the next test either
        w.kill()
    assert code == 130, rest
    assert "Traceback" not in rest and "Exception ignored" not in rest, rest
    lines = [ln for ln in rest.splitlines() if ln.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0], rest
    assert not left, [w.cmdline() for w in left]
    assert not (tmp_path / "art").exists()
    assert any("extracting the model's kernels" in ln for ln in seen), seen  # what it does is said


def test_ctrl_c_while_the_command_line_is_read_exits_130(monkeypatch, capsys):
    import edgeopt.pipeline.cli as cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    code, lines, _ = run_cli(["--version"], capsys)
    assert code == 130 and lines == ["edgeopt: interrupted"]
