"""Distillation across processes (torchrun, gloo) and checkpoint/resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import edgeopt.compress as ec
from edgeopt.pipeline.tasks import TrainConfig, load_task, train
from edgeopt.runtimes.torch_runner import torch_outputs
from edgeopt.pipeline.zoo import create
from edgeopt.core.errors import InputError
from edgeopt.pipeline.gate_stats import mcnemar
from helpers import edgeopt_cli

pytestmark = pytest.mark.integration  # subprocesses, builds, servers or whole studies


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    task = load_task("digits")
    teacher = train(create("digits_cnn"), task, TrainConfig(epochs=4), progress=False)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(teacher.state_dict(), path)
    return task, teacher, path


def assert_same_accuracy(task, one, two):
    """Two trainings of one procedure, differing only where floating-point sums are split (one
    process or two): neither may be better than the other beyond what the test set can tell.

    The tolerance is the test set's own: McNemar's paired test on the samples where the two
    models disagree, two-sided at 1 %, never a fixed gap that one CPU's outcome set (0.9583 vs
    0.9639 on 360 digits is 2 samples net of 8 discordant: no evidence of a difference)."""
    right_one = torch_outputs(one, task.test.x)[0].argmax(axis=1) == task.test.y
    right_two = torch_outputs(two, task.test.x)[0].argmax(axis=1) == task.test.y
    one_worse, two_worse = mcnemar(right_one, right_two), mcnemar(right_two, right_one)
    assert min(one_worse.p_worse, two_worse.p_worse) >= 0.005, (
        f"accuracies {right_one.mean():.4f} and {right_two.mean():.4f} differ beyond chance: "
        f"{one_worse.worse} samples only the first got right, {one_worse.better} only the second")
    return right_one.mean(), right_two.mean()


def test_two_processes_match_one(digits):
    task, teacher, _ = digits
    student = ec.prune(teacher, ec.PruneConfig(amount=0.5, scope="local"), torch.zeros(1, 1, 32, 32)).output
    cfg = ec.DistillConfig(epochs=2, seed=1, shift=1, batch_size=64)
    one = ec.distill(student, cfg, task, teacher=teacher, progress=False).output
    two = ec.distill(student, cfg, task, teacher=teacher, progress=False, nproc=2).output
    assert ec.last_record(two)["metrics"]["processes"] == 2 and ec.last_record(one)["metrics"]["processes"] == 1
    _, acc_two = assert_same_accuracy(task, one, two)
    assert acc_two > 0.9
    assert [r["name"] for r in ec.history(two)] == ["prune", "distill"]


def test_precomputed_teacher_logits_split_over_processes(digits):
    task, teacher, _ = digits
    student = ec.prune(teacher, ec.PruneConfig(amount=0.5, scope="local"), torch.zeros(1, 1, 32, 32)).output
    cfg = ec.DistillConfig(epochs=2, seed=2)
    cached = ec.DistillConfig(epochs=2, seed=2, precompute_teacher=True)
    live = ec.distill(student, cfg, task, teacher=teacher, progress=False).output
    one = ec.distill(student, cached, task, teacher=teacher, progress=False).output
    for p, q in zip(live.parameters(), one.parameters()):  # the same logits, computed once
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    two = ec.distill(student, cached, task, teacher=teacher, progress=False, nproc=2).output
    assert_same_accuracy(task, one, two)
    with pytest.raises(InputError, match="precompute_teacher needs shift=0"):
        ec.DistillConfig(epochs=1, precompute_teacher=True, shift=2)


RUN = """
import json, sys, torch
import edgeopt.compress as ec
from edgeopt.pipeline.tasks import load_task
from edgeopt.runtimes.torch_runner import torch_outputs
from edgeopt.pipeline.zoo import create

torch.set_num_threads(1)
task = load_task("digits")
teacher = create("digits_cnn"); teacher.load_state_dict(torch.load(sys.argv[1]))
cfg = ec.DistillConfig(epochs=4, seed=4, shift=1, patience=None)
student = ec.distill(create("digits_cnn", seed=1), cfg, task, teacher=teacher, progress=False, checkpoint_dir=sys.argv[2]).output
json.dump({"acc": task.score(torch_outputs(student, task.test.x)[0]),
           "params": [float(p.double().sum()) for p in student.parameters()]}, open(sys.argv[3], "w"))
"""


def test_killed_distillation_resumes_to_the_same_result(digits, tmp_path):
    _, _, teacher_path = digits
    py = [sys.executable, "-c", RUN, str(teacher_path)]
    full = subprocess.run([*py, str(tmp_path / "ck-full"), str(tmp_path / "full.json")], capture_output=True,
                          text=True, timeout=600)
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen([*py, str(tmp_path / "ck"), str(tmp_path / "killed.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while not (tmp_path / "ck" / "distill.ckpt").exists() and time.monotonic() - t0 < 300:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed.json").exists(), "killed before it finished"
    epoch = torch.load(tmp_path / "ck" / "distill.ckpt", weights_only=False)["state"]["epoch"]
    assert 1 <= epoch < 4
    resumed = subprocess.run([*py, str(tmp_path / "ck"), str(tmp_path / "resumed.json")], capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "full.json").read_text())
    b = json.loads((tmp_path / "resumed.json").read_text())
    assert a["acc"] == b["acc"]
    np.testing.assert_allclose(a["params"], b["params"], rtol=1e-6)


def test_checkpoint_from_another_config_is_refused(digits, tmp_path):
    task, teacher, _ = digits
    ec.distill(create("digits_cnn", seed=1), ec.DistillConfig(epochs=1), task, teacher=teacher, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(InputError, match="another DistillConfig"):
        ec.distill(create("digits_cnn", seed=1), ec.DistillConfig(epochs=2), task, teacher=teacher, progress=False, checkpoint_dir=tmp_path)


def test_process_counts_the_data_cannot_split(digits):
    task, teacher, _ = digits
    small = (task.train.x[:3], task.train.y[:3])
    with pytest.raises(InputError, match="nproc 4 is larger than the 3 training samples"):
        ec.distill(create("digits_cnn"), ec.DistillConfig(epochs=1, batch_size=4), small, teacher=teacher, nproc=4)
    with pytest.raises(InputError, match="batch_size 64 does not split evenly over 3 processes"):
        ec.distill(create("digits_cnn"), ec.DistillConfig(epochs=1), task, teacher=teacher, nproc=3)
    with pytest.raises(InputError, match="nproc must be an integer >= 1"):
        ec.distill(create("digits_cnn"), ec.DistillConfig(epochs=1), task, teacher=teacher, nproc=0)
    batches = [(task.train.x[:8], task.train.y[:8])]
    with pytest.raises(InputError, match="needs array data"):
        ec.distill(create("digits_cnn"), ec.DistillConfig(epochs=1, batch_size=8), batches, teacher=teacher, nproc=2)


def test_run_refuses_nproc_before_any_work(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: zoo:digits_cnn\ntask: digits\nvariants:\n  kd: [{distill: {epochs: 1}}]\n"
                      "targets: [{runtime: onnxruntime}]\n")
    r = edgeopt_cli("run", recipe, "--out", tmp_path / "out", "--nproc", "3")
    assert r.returncode == 2 and "batch_size 64 does not split evenly over 3 processes" in r.stderr, r.stderr
    assert not (tmp_path / "out" / "report.json").exists()
