"""A shared tuning database stays loadable: bad records are set aside one by one, and kernels
shared by two models carry the same block names, so one model's records replay on the other's."""

import json
import re

import numpy as np
import pytest
import torch

from edgeopt.compile.tuning_db import REJECTED, RECORDS, canonical_block_names, check_database


def _database(folder, blocks=("C",)):
    """A real MetaSchedule JSON database holding one matmul workload and a record per split."""
    import tvm
    from tvm import s_tir, te
    from tvm.s_tir import meta_schedule as ms

    a = te.placeholder((16, 16), name="A")
    b = te.placeholder((16, 16), name="B")
    k = te.reduce_axis((0, 16), name="k")
    c = te.compute((16, 16), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    mod = tvm.IRModule({"main": te.create_prim_func([a, b, c])})
    folder.mkdir(parents=True, exist_ok=True)
    db = ms.database.JSONDatabase(str(folder / "database_workload.json"), str(folder / RECORDS),
                                  allow_missing=True)
    workload = db.commit_workload(mod)
    target = tvm.target.Target({"kind": "llvm"})
    for factor in (2, 4, 8):
        sch = s_tir.Schedule(mod)
        sch.split(sch.get_loops(sch.get_sblock("C"))[0], [None, factor])
        db.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, [1e-3 * factor], target))
    return folder


def _load(folder):
    from tvm.s_tir import meta_schedule as ms

    db = ms.database.JSONDatabase(str(folder / "database_workload.json"), str(folder / RECORDS))
    return len(db.get_all_tuning_records())


def test_records_that_do_not_replay_are_set_aside_and_the_rest_loads(tmp_path):
    db = _database(tmp_path / "db")
    lines = (db / RECORDS).read_text().splitlines()
    assert len(lines) == 3 and _load(db) == 3
    # a trace for a block the workload does not have (what another model's names gave), a line
    # cut short by a killed process, and a line that is not JSON at all
    renamed = lines[1].replace('"C"', '"lv108_red"')
    (db / RECORDS).write_text("\n".join([lines[0], renamed, lines[2], lines[2][:40], "garbage"]) + "\n")
    with pytest.raises(Exception):
        _load(db)  # what MetaSchedule does with such a file: nothing of it loads

    said = []
    summary = check_database(db, said.append)
    assert summary == {"records": 2, "workloads": 1, "rejected": 3}
    assert _load(db) == 2, "the good records load again"
    rejected = [json.loads(ln) for ln in (db / REJECTED).read_text().splitlines()]
    assert [r["line"] for r in rejected] == [2, 4, 5] and rejected[0]["record"] == renamed
    assert "set aside 3 record(s)" in said[0]
    # checked files are not replayed again; a new bad line is found on the next check
    assert check_database(db)["rejected"] == 0
    with open(db / RECORDS, "a") as f:
        f.write("[7, []]\n")
    assert check_database(db) == {"records": 2, "workloads": 1, "rejected": 1}


def test_trials_are_counted_per_model_in_a_shared_database(tmp_path):
    from edgeopt.compile.tuning_db import model_trials, set_model_trials

    db = _database(tmp_path / "db")
    assert model_trials(db, "a") == 3, "without a ledger the database is one model's"
    set_model_trials(db, "a", 3)
    set_model_trials(db, "b", 5)
    assert (model_trials(db, "a"), model_trials(db, "b"), model_trials(db, "c")) == (3, 5, 0)


def test_a_folder_without_a_database_is_fine(tmp_path):
    assert check_database(tmp_path) == {"records": 0, "workloads": 0, "rejected": 0}


def test_shared_kernels_get_the_same_block_names_in_every_model(tmp_path):
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from edgeopt.compile import ExportConfig, export
    from edgeopt.compile.targets import resolve_target

    class Net(torch.nn.Module):
        def __init__(self, depth):
            super().__init__()
            self.body = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(depth)])

        def forward(self, x):  # the mean's reduction block is named after its input variable
            return torch.softmax(self.body(x), -1).mean(-1, keepdim=True)

    x = np.zeros((4, 16), np.float32)
    names = []
    for depth in (1, 3):
        path = export(Net(depth).eval(), ExportConfig(), x, out=tmp_path / f"m{depth}.onnx").path
        mod = from_onnx(onnx.load(str(path)), keep_params_in_input=False)
        with tvm.target.Target(resolve_target("cpu")):
            mod = relax.get_pipeline("zero")(mod)
        before = mod["mean"].script()
        mod = canonical_block_names(mod)
        tvm.ir.assert_structural_equal(mod["mean"], tvm.script.from_source(before))
        names.append((before, mod["mean"].script()))
    blocks = [[re.findall(r'T\.sblock\("([^"]*)"\)', text) for text in pair] for pair in names]
    (before1, after1), (before3, after3) = blocks
    assert before1 != before3, "legalization named the two models' blocks differently"
    assert after1 == after3 == ["root", "b1_red", "T_divide"]


@pytest.mark.slow  # five tuned builds: about 5 minutes on 2 cores
def test_one_database_shared_by_fp32_pruned_int8_and_another_model(tmp_path):
    from edgeopt.compile import BuildConfig, ExportConfig, TuneConfig, build, export
    from edgeopt.compress import PruneConfig, QuantizeConfig, prune, quantize
    from edgeopt.runtimes import load
    from helpers import example_inputs, tiny_conv_net

    x = example_inputs()
    model = tiny_conv_net()
    fp32 = export(model, ExportConfig(), x, out=tmp_path / "fp32")
    pruned = export(prune(model, PruneConfig(amount=0.5), x).output, ExportConfig(), x, out=tmp_path / "pruned")
    calib = [example_inputs(seed=s) for s in range(8)]
    int8 = quantize(fp32, QuantizeConfig(method="minmax"), calib, out=tmp_path / "int8")
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 4)).eval()
    mlp = export(other, ExportConfig(), x, out=tmp_path / "mlp")
    db = tmp_path / "db"
    for name, onnx_model in [("fp32", fp32), ("pruned", pruned), ("int8", int8), ("mlp", mlp), ("fp32-again", fp32)]:
        config = BuildConfig(tune=TuneConfig(trials=8, db=str(db), cost_model="random",
                                             trials_per_round=8, trials_per_iter=4))
        built = build(onnx_model, config, out=tmp_path / f"tvm-{name}")
        tuning = built.record["metrics"]["tuning"]
        if name == "fp32-again":  # its 8 trials are in the shared database already
            assert tuning["rounds"] == 0 and tuning["trials_before"] >= 8
        else:  # the others' records do not count towards this model's budget
            assert tuning["trials_before"] == 0 and tuning["trials_after"] >= 8, (name, tuning)
        reference = load(onnx_model.artifact.path).run(x)[0]
        got = load(built.artifact).run(x)[0]
        tolerance = 1e-4 if name != "int8" else 0.1  # int8: TVM's integer path against ORT's
        np.testing.assert_allclose(got, reference, rtol=tolerance, atol=tolerance * np.abs(reference).max())
    summary = check_database(db)
    assert summary["rejected"] == 0 and not (db / REJECTED).exists(), "every record replays"
    assert _load(db) == summary["records"] >= 8


def test_native_warnings_during_tuning_go_to_the_database_logs(tmp_path):
    """What native code writes to stderr during a round lands in a file; stderr comes back."""
    import os
    import subprocess
    import sys

    code = ("import os, sys; from pathlib import Path; from edgeopt.compile.tune import native_stderr_to\n"
            "with native_stderr_to(Path(sys.argv[1])):\n"
            "    os.write(2, b'Tensorize failed\\n')\n"
            "os.write(2, b'after\\n')\n")
    log = tmp_path / "logs" / "tvm_warnings.log"
    r = subprocess.run([sys.executable, "-c", code, str(log)], capture_output=True, text=True, env=os.environ)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "after\n"
    assert log.read_text() == "Tensorize failed\n"
