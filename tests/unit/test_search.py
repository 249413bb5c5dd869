"""edgeopt search: constraints, the search section, exit codes, reuse, resumption, the outputs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeopt.core.errors import InputError
from edgeopt.pipeline.recipe import parse_recipe
from edgeopt.pipeline.search_space import SearchConstraints, SearchSpace, trial_steps, variant_name
from helpers import REPO, edgeopt_cli, search_latency

TINY = """\
model: helpers:tiny_conv_net
task: helpers:tiny_image_task
train: {epochs: 2}
variants: {fp32: []}
targets: [{runtime: onnxruntime}]
bench: {warmup: 1, repeat: 5, threads: 1}
search:
  prune: [0, 0.5]
  lowrank: []
  distill: {epochs: 1, patience: null}
  quantize: [none, minmax, entropy]
  startup_trials: 2
"""
TRIALS = 6
DROP = 0.2


# -- validation (no work) ---------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"max_accuracy_drop": -0.01}, "max_accuracy_drop must be a number in \\[0, 1\\]"),
    ({"max_accuracy_drop": 1.5}, "max_accuracy_drop must be a number in \\[0, 1\\]"),
    ({"max_size_mb": "big"}, "max_size_mb must be a number"),
    ({"max_latency_ms": True}, "max_latency_ms must be a number"),
    ({"max_latency_ms": float("nan")}, "max_latency_ms must be a number >= 0"),
])
def test_constraints_validate_themselves(kwargs, message):
    with pytest.raises(InputError, match=message):
        SearchConstraints(**kwargs)


def test_constraint_violations_are_relative_for_latency_and_size():
    c = SearchConstraints(max_accuracy_drop=0.01, max_size_mb=2.0, max_latency_ms=1.0)
    assert c.violations(1.5, 1.0, 0.0) == [0.5, -0.5, -0.01]
    assert SearchConstraints().violations(9.0, 9.0, 0.5) == []


@pytest.mark.parametrize("section, message", [
    ("search: {colour: blue}\n", "line 7: 'search': unknown key\\(s\\) \\['colour'\\]"),
    ("search: {quantize: [int4]}\n", "unknown quantize choice\\(s\\) \\['int4'\\]"),
    ("search: {prune: [0, 1.5]}\n", "a prune amount must be a number in \\[0, 0.99\\]"),
    ("search: {distill: {lr: 0.1}}\n", "missing required parameter\\(s\\) \\['epochs'\\]"),
    ("search: {sampler: cmaes}\n", "sampler must be one of tpe, nsga2"),
    ("search: {prune: 0.5}\n", "prune must be a list"),
])
def test_malformed_search_section_names_key_and_line(section, message):
    text = TINY.split("search:")[0] + section
    with pytest.raises(InputError, match=message):
        parse_recipe(text, "r.yaml")


def test_default_space_points_are_valid_step_lists():
    space = SearchSpace()
    for params in ({"runtime": "onnxruntime", "prune": 0.5, "quantize": "entropy+eq"},
                   {"runtime": "onnxruntime", "prune": 0.0, "lowrank": 1, "quantize": "qat"},
                   {"runtime": "torch", "prune": 0.0, "lowrank": 0}):
        steps = trial_steps(params, space, labelled_top1=True)
        assert [s.kind.level for s in steps] == sorted((s.kind.level for s in steps),
                                                        key=lambda lv: lv != "torch")
    steps = trial_steps({"runtime": "onnxruntime", "prune": 0.5, "quantize": "entropy+eq"}, space, True)
    assert variant_name({"prune": 0.5, "quantize": "entropy+eq"}, steps) == "prune0.5+kd+entropy+eq"
    assert [s.name for s in steps] == ["prune", "distill", "quantize"]
    assert steps[2].config.equalize and steps[2].config.bias_correction
    # unlabelled tasks get no distillation
    assert [s.name for s in trial_steps({"prune": 0.5}, space, False)] == ["prune"]


def test_a_runtime_with_its_own_quantizer_is_one_int8_candidate_named_int8():
    """ExecuTorch quantizes with XNNPACK's quantizer: entropy+eq there is the same artifact as
    minmax, so the search names both int8, records the default quantize step and counts one point."""
    from edgeopt.pipeline.steps import make_step
    from edgeopt.pipeline.search_space import space_points, warm_start_points

    space = SearchSpace(prune=(0.0, 0.5), lowrank=(), quantize=("none", "minmax", "entropy+eq"))
    et = {"runtime": "executorch", "prune": 0.5, "quantize": "entropy+eq"}
    steps = trial_steps(et, space, labelled_top1=False)
    assert variant_name(et, steps) == "prune0.5+int8"
    assert not {"method", "equalize", "bias_correction"} & set(steps[-1].params)  # none claimed
    ort = {**et, "runtime": "onnxruntime"}
    assert variant_name(ort, trial_steps(ort, space, False)) == "prune0.5+entropy+eq"
    points = space_points(space, ["onnxruntime", "executorch"], labelled_top1=False)
    assert sum(p["runtime"] == "onnxruntime" for p in points) == 6
    assert sorted(p.get("quantize") for p in points if p["runtime"] == "executorch") == ["minmax", "minmax", "none", "none"]
    # the recipe's int8 variant (any method) is the executorch int8 point
    variants = {"int8": [make_step("quantize", {"method": "entropy", "per_channel": True})]}
    warm, skipped = warm_start_points(variants, space, ["executorch"], labelled_top1=False)
    assert warm == [("recipe:int8", {"runtime": "executorch", "prune": 0.0, "quantize": "minmax"})] and not skipped


def test_cli_malformed_constraints_exit_2_in_one_line(tmp_path):
    (tmp_path / "r.yaml").write_text(TINY)
    for args, words in ((["--max-accuracy-drop", "-0.1"], "max_accuracy_drop must be a number in [0, 1]"),
                        (["--max-size-mb", "abc"], "--max-size-mb: expected a number, got 'abc'")):
        r = edgeopt_cli("search", tmp_path / "r.yaml", "--out", tmp_path / "out", *args, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


# -- a whole (tiny) search --------------------------------------------------------------------

@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One uninterrupted search of the tiny space, with deterministic latencies."""
    from edgeopt.pipeline.search import search

    root = tmp_path_factory.mktemp("search")
    (root / "r.yaml").write_text(TINY)
    lines = []
    result = search(root / "r.yaml", root / "out", constraints=SearchConstraints(max_accuracy_drop=DROP),
                    trials=TRIALS, progress=lines.append, measure_latency=search_latency)
    return root, result, lines


def _summary(result):
    rows = [(r["variant"], r["state"], r.get("latency_ms"), r.get("size_mb"), r.get("quality"))
            for r in result.trials if r["state"] in ("complete", "pruned")]
    return rows, [r["variant"] for r in result.pareto], result.chosen and result.chosen["variant"]


@pytest.mark.integration
def test_search_writes_chosen_artifact_recipe_and_report(searched):
    from edgeopt.pipeline.recipe import load_recipe
    from edgeopt.runtimes import load
    from edgeopt.runtimes.artifact import load_artifact

    root, result, lines = searched
    out = root / "out"
    assert result.chosen is not None and result.chosen["feasible"]
    assert sum(r["state"] in ("complete", "pruned") for r in result.trials) == TRIALS
    assert sum(line.startswith("trial ") for line in lines) == TRIALS  # one progress line per trial
    doc = json.loads((out / "search.json").read_text())
    assert doc["chosen"] == result.chosen["number"] and doc["pareto"]
    feasible = [r for r in doc["trials"] if r.get("feasible") and "repeat_of" not in r]
    fastest = min(r["latency_ms"] for r in feasible)
    near = [r for r in feasible if r["latency_ms"] <= fastest * 1.03]  # choose_tolerance
    best = min(near, key=lambda r: (-r["quality"], r["latency_ms"], r["size_mb"]))
    assert best["number"] == doc["chosen"]

    art = load_artifact(out / "chosen")  # checksums verified
    names = [rec["name"] for rec in art.history]
    assert names[:1] == ["prune"] and "distill" in names and "export" in names
    runner = load(art, threads=1)
    import numpy as np

    assert runner.run(np.zeros((1, 1, 8, 8), np.float32))[0].shape == (1, 3)

    recipe = load_recipe(out / "chosen-recipe.yaml")
    assert list(recipe.variants) == [result.chosen["variant"]]
    assert [s.to_dict() for s in recipe.variants[result.chosen["variant"]]] == result.chosen["steps"]
    assert [t.runtime for t in recipe.targets] == ["onnxruntime"]

    html = (out / "index.html").read_text()
    assert 'id="search"' in html and html.count("data:image/png;base64,") >= 2
    assert (out / "progress.png").stat().st_size > 0 and "## Search" in (out / "report.md").read_text()


@pytest.mark.integration
def test_trials_sharing_a_prefix_do_not_retrain(searched):
    """prune0.5+kd, +minmax and +entropy share one pruned and distilled model: trained once."""
    from edgeopt.pipeline.search import search

    root, result, _ = searched
    variants = {r["variant"] for r in result.trials if r["state"] == "complete"}
    assert len([v for v in variants if v.startswith("prune0.5+kd")]) >= 2
    assert result.steps_run.count("prune") == 1 and result.steps_run.count("distill") == 1
    # another search in the same folder (other constraints: a new study) finds them on disk
    again = search(root / "r.yaml", root / "out", constraints=SearchConstraints(max_accuracy_drop=0.5),
                   trials=3, progress=lambda line: None, measure_latency=search_latency)
    assert again.steps_run == []


@pytest.mark.integration
def test_nothing_feasible_exits_1_with_the_closest(searched, tmp_path):
    root, _, _ = searched
    r = edgeopt_cli("search", root / "r.yaml", "--out", root / "out", "--max-latency-ms", "0.000001",
                    "--trials", "3", cwd=REPO / "tests")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no variant meets the constraints; the closest:" in r.stdout
    assert 1 <= sum(line.startswith("  trial ") for line in r.stdout.splitlines()) <= 3
    assert "latency" in r.stdout and "> 1e-06 ms" in r.stdout
    assert not (root / "out" / "chosen-recipe.yaml").exists()


KILLED = """\
import os, signal, sys
sys.path.insert(0, {tests!r})
from helpers import search_latency
from edgeopt.pipeline.search import search
from edgeopt.pipeline.search_space import SearchConstraints

calls = [0]

def latency(runner, artifact, target):
    calls[0] += 1
    if calls[0] == 3:  # in the middle of the third measured trial: no clean-up at all
        os.kill(os.getpid(), signal.SIGKILL)
    return search_latency(runner, artifact, target)

search({recipe!r}, {out!r}, constraints=SearchConstraints(max_accuracy_drop={drop}), trials={trials},
       progress=lambda line: print(line, flush=True), measure_latency=latency)
"""


@pytest.mark.integration
def test_killed_search_resumes_to_the_uninterrupted_result(searched, tmp_path):
    """Killed (SIGKILL) in the middle of a trial, then run again: the finished trials are kept,
    none is measured again, and the end is the uninterrupted run's. Latencies come from a
    deterministic function (``measure_latency``): timing noise, not the resume logic, would
    otherwise make the two runs' objective values and so the sampler's choices differ."""
    from edgeopt.pipeline.search import search
    from edgeopt.pipeline.study import slug

    root, reference, _ = searched
    (tmp_path / "r.yaml").write_text(TINY)
    out = tmp_path / "out"
    for base in (root / "out" / "work").glob("*/base-model"):  # the trained base model, to save time
        shutil.copytree(base, out / "work" / base.parent.name / "base-model")
    script = tmp_path / "killed.py"
    script.write_text(KILLED.format(tests=str(REPO / "tests"), recipe=str(tmp_path / "r.yaml"), out=str(out),
                                    drop=DROP, trials=TRIALS))
    env = dict(os.environ, PYTHONPATH=str(REPO / "tests"))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == -9, proc.stdout + proc.stderr
    finished = [line.split(":")[1].strip().split(" on ")[0] for line in proc.stdout.splitlines()
                if line.startswith("trial ") and ("feasible" in line or "pruned" in line)]
    assert len(finished) >= 2, proc.stdout

    measured = []

    def latency(runner, artifact, target):
        measured.append(str(artifact.path))
        return search_latency(runner, artifact, target)

    lines = []
    resumed = search(tmp_path / "r.yaml", out, constraints=SearchConstraints(max_accuracy_drop=DROP),
                     trials=TRIALS, progress=lines.append, measure_latency=latency)
    assert any("interrupted in an earlier run; asked again" in line for line in lines)
    again = {r["variant"] for r in resumed.trials if r["number"] in resumed.ran}
    assert not again & set(finished), "a finished trial was run again"
    assert not any(f"/{slug(v)}/" in p for p in measured for v in finished)
    assert _summary(resumed) == _summary(reference)
    assert resumed.chosen["params"] == reference.chosen["params"]


WARM = TINY.replace("variants: {fp32: []}", """variants:
  int8: [{quantize: {method: minmax}}]
  pruned+kd: [{prune: {amount: 0.5, scope: local}}, {distill: {epochs: 1, patience: null}}]
  pruned30: [{prune: {amount: 0.3, scope: local}}]
  fp32: []""")


def test_warm_start_points_are_the_recipe_variants_the_space_expresses():
    from edgeopt.pipeline.search_space import warm_start_points

    recipe = parse_recipe(WARM.replace("targets: [{runtime: onnxruntime}]",
                                       "targets: [{runtime: torch}, {runtime: onnxruntime}]"), "r.yaml")
    space = SearchSpace.from_dict(recipe.search)
    warm, skipped = warm_start_points(recipe.variants, space, ["torch", "onnxruntime"], labelled_top1=True)
    assert warm == [("recipe:int8", {"runtime": "onnxruntime", "prune": 0.0, "quantize": "minmax"}),
                    ("recipe:pruned+kd", {"runtime": "torch", "prune": 0.5}),
                    ("recipe:pruned+kd", {"runtime": "onnxruntime", "prune": 0.5, "quantize": "none"}),
                    ("recipe:fp32", {"runtime": "torch", "prune": 0.0}),
                    ("recipe:fp32", {"runtime": "onnxruntime", "prune": 0.0, "quantize": "none"})]
    assert skipped == ["pruned30 on torch", "pruned30 on onnxruntime"]  # 0.3 is not a prune choice
    # without distillation in the space, a pruned+kd variant is no point of it
    nokd = SearchSpace.from_dict({**recipe.search, "distill": False})
    assert "pruned+kd on torch" in warm_start_points(recipe.variants, nokd, ["torch"], True)[1]


@pytest.mark.integration
def test_warm_start_measures_the_recipe_variants_first(searched, tmp_path):
    """The recipe's expressible variants are the first trials, in the recipe's order, with their
    origin in search.json; sampled trials follow; the inexpressible one is logged as skipped."""
    from edgeopt.pipeline.search import search

    root, plain, _ = searched
    assert plain.trials[0]["origin"] == "recipe:fp32" and plain.trials[0]["variant"] == "fp32"
    (tmp_path / "r.yaml").write_text(WARM)
    out = tmp_path / "out"
    shutil.copytree(root / "out" / "work", out / "work")  # same base model and step cache: no training
    lines = []
    result = search(tmp_path / "r.yaml", out, constraints=SearchConstraints(max_accuracy_drop=DROP),
                    trials=5, progress=lines.append, measure_latency=search_latency)
    rows = json.loads((out / "search.json").read_text())["trials"]
    assert [(r["origin"], r["variant"]) for r in rows[:3]] == [
        ("recipe:int8", "minmax"), ("recipe:pruned+kd", "prune0.5+kd"), ("recipe:fp32", "fp32")]
    assert all(r["state"] in ("complete", "pruned") for r in rows[:3])
    assert {r["origin"] for r in rows[3:]} == {"sampler"} and len(result.trials) >= 5
    assert any("warm start: 3 of the recipe's variants first" in line and "skipped: pruned30 on onnxruntime" in line
               for line in lines)
    assert "[recipe:int8]" in (out / "report.md").read_text() or result.chosen["origin"] != "recipe:int8"


def test_choice_prefers_accuracy_among_latencies_within_tolerance():
    from edgeopt.pipeline.search import choose

    rows = [{"number": i, "state": "complete", "feasible": True, "latency_ms": ms, "size_mb": 1.0, "quality": q}
            for i, (ms, q) in enumerate([(1.00, 0.90), (1.02, 0.92), (1.10, 0.95)])]
    assert choose(rows, 0.03)[1]["number"] == 1  # 2% slower, 2 points better
    assert choose(rows, 0.0)[1]["number"] == 0
    assert choose(rows, 0.2)[1]["number"] == 2


# -- failures: built once, ruled out, never spun on (issue 27) --------------------------------

def test_stricter_lowrank_budgets_fall_with_the_one_that_failed():
    from edgeopt.pipeline.search_space import stricter_lowrank

    space = SearchSpace.from_dict({"lowrank": [{"flops_budget": 0.3}, {"flops_budget": 0.1},
                                               {"flops_budget": 0.5}, {"flops_budget": 0.05, "method": "cp"},
                                               {"params_budget": 0.1}, {"energy": 0.5}]})
    assert stricter_lowrank(space, 1) == [1, 2]  # 0.1 <= 0.3; not 0.5, another method, another budget
    assert stricter_lowrank(space, 3) == [1, 2, 3]
    assert stricter_lowrank(space, 6) == [6]


def test_steered_sampler_never_proposes_a_ruled_out_candidate():
    """A failed torch-level structure (lowrank 1, every quantization) and a failed point are out
    of the space: 60 asks of TPE (its uniform startup included) or of a uniform sampler never
    propose either, and every candidate still open is proposed."""
    import optuna
    from optuna.trial import TrialState

    from edgeopt.pipeline.search import RuledOut, steered_sampler
    from edgeopt.pipeline.search_space import space_points, suggest, trial_steps, variant_name

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace.from_dict({"prune": [0, 0.5], "lowrank": [{"flops_budget": 0.01}],
                                   "quantize": ["none", "minmax"], "startup_trials": 4})
    runtimes = ["onnxruntime"]
    candidates = [(p, variant_name(p, trial_steps(p, space, True))) for p in space_points(space, runtimes, True)]
    study = optuna.create_study(directions=["minimize", "minimize", "maximize"])
    failures = [({"runtime": "onnxruntime", "prune": 0.0, "lowrank": 1, "quantize": "none"},
                 {"removed": [{"prune": 0.0, "lowrank": 1}]}),
                ({"runtime": "onnxruntime", "prune": 0.5, "quantize": "minmax"}, {})]
    for params, extra in failures:
        trial = study.ask()
        suggest(trial, space, runtimes, True)
        trial.set_user_attr("variant", variant_name(params, trial_steps(params, space, True)))
        trial.set_user_attr("runtime", "onnxruntime")
        trial.set_user_attr("error", "cannot be met")
        for k, v in extra.items():
            trial.set_user_attr(k, v)
        study.tell(trial, state=TrialState.PRUNED)
    ruled = RuledOut.from_trials(study.get_trials())
    assert ruled.structures == {(0.0, 1): 0} and ruled.points == {("prune0.5+kd+minmax", "onnxruntime"): 1}
    assert ruled.blocked({"prune": 0.0, "lowrank": 1}, candidates)
    assert not ruled.blocked({"prune": 0.0}, candidates)
    seen = set()
    for n in range(60):
        base = (optuna.samplers.TPESampler(seed=n, n_startup_trials=space.startup_trials) if n % 2
                else optuna.samplers.RandomSampler(seed=n))
        study.sampler = steered_sampler(base, lambda prefix: ruled.blocked(prefix, candidates), seed=n)
        trial = study.ask()
        params = suggest(trial, space, runtimes, True)
        vname = variant_name(params, trial_steps(params, space, True))
        assert ruled.covering(params, vname) is None, params
        seen.add(vname)
        study.tell(trial, [1.0 + n, 1.0, 0.5])
    assert seen == {"fp32", "minmax", "prune0.5+kd"}  # every candidate still open is proposed


def test_progress_plot_axis_covers_the_trials_that_ran():
    """Trials answered from an earlier one (a failure asked again thousands of times) are not
    drawn: the x axis ends at the last trial that ran."""
    import matplotlib.pyplot as plt

    from edgeopt.pipeline.search import progress_figure

    rows = [{"number": i, "state": "complete", "feasible": True, "latency_ms": 1.0 - i / 10, "size_mb": 1.0,
             "quality": 0.9} for i in range(5)]
    rows.append({"number": 5, "state": "failed", "error": "flops_budget=0.01 cannot be met"})
    rows += [{"number": i, "state": "failed", "error": "flops_budget=0.01 cannot be met", "repeat_of": 5}
             for i in range(6, 4000)]
    fig = progress_figure(rows)
    try:
        low, high = fig.axes[-1].get_xlim()
        assert high <= 6 and low >= -1
    finally:
        plt.close(fig)


HALF_INFEASIBLE = """\
model: helpers:tiny_conv_net
task: random
variants: {fp32: []}
targets: [{runtime: onnxruntime}]
bench: {warmup: 1, repeat: 3, threads: 1}
search:
  prune: [0, 0.25, 0.5, 0.75]
  lowrank: [{flops_budget: 0.3}, {flops_budget: 0.2}, {flops_budget: 0.1}, {flops_budget: 0.05}]
  quantize: [none, mean_minmax, minmax, percentile]
  startup_trials: 4
"""
HALF_TRIALS = 20


@pytest.mark.integration
def test_search_on_a_half_infeasible_space_builds_each_failure_once(tmp_path):
    """Every low-rank budget is below what tiny_conv_net can reach (its lowest candidate ranks
    leave 0.39 of the FLOPs): 16 of the 32 candidates cannot be built. The old search rebuilt the
    first failing candidate until the time budget ran out; now each failed configuration is built
    once, rules out its structure (and the stricter budgets), the sampler never proposes it again,
    and the search ends within its trial budget with a choice. A resume builds none of them."""
    from edgeopt.pipeline.search import search

    (tmp_path / "r.yaml").write_text(HALF_INFEASIBLE)
    lines = []
    result = search(tmp_path / "r.yaml", tmp_path / "out", constraints=SearchConstraints(max_accuracy_drop=0.5),
                    trials=HALF_TRIALS, budget_minutes=4, seed=0, progress=lines.append, measure_latency=search_latency)
    doc = json.loads((tmp_path / "out" / "search.json").read_text())
    assert doc["stopped"] != "budget of 4 min", doc["stopped"]  # the old search spun until here
    counts = doc["counts"]
    assert counts["trials"] <= HALF_TRIALS and result.chosen is not None and result.chosen["feasible"]
    failed = [r for r in doc["trials"] if r["state"] == "failed"]
    assert 1 <= counts["failed"] <= 0.05 * counts["trials"], counts
    built = [(r["variant"], r["runtime"]) for r in failed if "repeat_of" not in r]
    assert len(built) == len(set(built)) == counts["failed_built"]  # every failed configuration built once
    assert all("cannot be met" in r["error"] and r["failed_stage"] == "torch" for r in failed)
    removed = {(s["prune"], s["lowrank"]) for r in failed for s in r.get("removed", [])}
    weakest = min(r["params"]["lowrank"] for r in failed)  # the budgets fall in the recipe's order
    assert removed == {(0.0, j) for j in range(weakest, 5)}, "a failed budget (or a stricter one) is still in the space"
    built_lowrank = [r for r in doc["trials"] if r["params"].get("lowrank") and "repeat_of" not in r]
    assert built_lowrank == [r for r in failed if "repeat_of" not in r]
    # the log: one line per trial, one line per removal, no traceback
    assert sum(line.startswith("trial ") for line in lines) == len(doc["trials"])
    assert sum("removed from the space" in line for line in lines) == counts["failed_built"]
    assert not any("Traceback" in line or "\n" in line for line in lines)

    # a resume with a larger budget knows the failures: none is built again
    more = search(tmp_path / "r.yaml", tmp_path / "out", constraints=SearchConstraints(max_accuracy_drop=0.5),
                  trials=HALF_TRIALS + 5, budget_minutes=4, seed=0, progress=lines.append,
                  measure_latency=search_latency)
    assert not any(r.get("error") and r["number"] in more.ran for r in more.trials)
    assert "lowrank" not in more.steps_run


ONE_BAD_BUDGET = """\
model: helpers:tiny_conv_net
task: random
variants: {fp32: []}
targets: [{runtime: onnxruntime}]
bench: {warmup: 1, repeat: 3, threads: 1}
search:
  prune: [0]
  lowrank: [{flops_budget: 0.05}]
  quantize: [none, minmax]
  startup_trials: 100
  warm_start: false
"""


@pytest.mark.integration
def test_a_failure_asked_again_is_answered_from_the_first_one(tmp_path, monkeypatch):
    """Without the steering (a sampler that proposes ruled-out candidates anyway, as uniform
    draws do), a failed configuration asked again is not built: it is answered from the first
    failure in one line, recorded as failed with ``repeat_of``, and counts toward the trials."""
    from edgeopt.pipeline import search as search_module

    monkeypatch.setattr(search_module, "steered_sampler", lambda base, blocked, seed: base, raising=False)
    (tmp_path / "r.yaml").write_text(ONE_BAD_BUDGET)
    lines = []
    result = search_module.search(tmp_path / "r.yaml", tmp_path / "out", trials=6, budget_minutes=3, seed=3,
                                  progress=lines.append, measure_latency=search_latency)
    doc = json.loads((tmp_path / "out" / "search.json").read_text())
    failed = [r for r in doc["trials"] if r["state"] == "failed"]
    first = failed[0]
    assert "repeat_of" not in first and first["removed"] == [{"prune": 0.0, "lowrank": 1}]
    again = failed[1:]
    assert again and all(r["repeat_of"] == first["number"] and r["error"] == first["error"] for r in again)
    assert doc["counts"]["failed_built"] == 1 and doc["counts"]["trials"] <= 6
    assert result.steps_run.count("lowrank") == 1  # built once
    repeat_lines = [line for line in lines if "ruled out by failed trial" in line]
    assert len(repeat_lines) == len(again) and all(len(line) < 120 for line in repeat_lines)


def test_cli_search_where_every_candidate_fails_says_so_once(tmp_path):
    """An ONNX export that always fails: the one candidate is built once, the search stops (the
    space is used up, not the time budget) and the CLI says nothing was measured; exit 1."""
    (tmp_path / "r.yaml").write_text("""\
model: helpers:unexportable
task: random
variants: {fp32: []}
targets: [{runtime: onnxruntime}]
search: {prune: [0], lowrank: [], quantize: [none], warm_start: false}
""")
    r = edgeopt_cli("search", tmp_path / "r.yaml", "--out", tmp_path / "out", "--budget-minutes", "2", cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "none was measured (1 failed; errors in search.json)" in r.stdout
    doc = json.loads((tmp_path / "out" / "search.json").read_text())
    assert doc["counts"]["failed_built"] == 1 and doc["stopped"].startswith("all 1 candidates tried")
    assert r.stderr.count("FAILED") == 1 and "Traceback" not in r.stderr
