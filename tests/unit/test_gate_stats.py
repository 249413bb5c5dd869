"""The CI gate's statistics: paired quality tests, latency intervals over rounds, row keys, the
task's own metric by default, baselines of another study, per-sample outcomes in reports."""

import json

import numpy as np
import pytest

from edgeopt.core.errors import InputError
from edgeopt.pipeline import gate_stats
from edgeopt.pipeline.gate import Thresholds, compare, format_rows
from helpers import edgeopt_cli


# -- paired tests ------------------------------------------------------------------------------

def _outcomes(n, worse, better, seed=0):
    """Baseline and candidate outcomes on n samples with the given discordant counts."""
    rng = np.random.default_rng(seed)
    old = rng.random(n) < 0.9
    new = old.copy()
    right, wrong = np.flatnonzero(old), np.flatnonzero(~old)
    new[right[:worse]] = False
    new[wrong[:better]] = True
    return old, new


def test_mcnemar_tells_chance_from_a_change():
    # The Intel run of test_distributed: 0.9583 against 0.9639 on 360 digits, 2 samples net of 8.
    c = gate_stats.mcnemar(*_outcomes(360, worse=5, better=3))
    assert (c.worse, c.better) == (5, 3) and abs(c.drop - 2 / 360) < 1e-12
    assert c.p_worse > 0.2 and c.low < 0 < c.high
    c = gate_stats.mcnemar(*_outcomes(360, worse=12, better=0))
    assert c.p_worse < 0.001 and c.low > 0
    same = gate_stats.mcnemar(*_outcomes(360, 0, 0))
    assert (same.drop, same.low, same.high, same.p_worse) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(InputError, match="two equal, non-empty vectors"):
        gate_stats.mcnemar([True, False], [True])


def test_outcomes_and_values_round_trip():
    old, _ = _outcomes(361, 0, 0)
    assert (gate_stats.unpack_outcomes(gate_stats.pack_outcomes(old), 361) == old).all()
    assert len(gate_stats.pack_outcomes(old)) <= 64      # 361 samples in 46 bytes (base64: 64 chars)
    v = np.random.default_rng(1).random(50)
    np.testing.assert_allclose(gate_stats.unpack_values(gate_stats.pack_values(v)), v, rtol=1e-6)
    with pytest.raises(InputError, match="not base64"):
        gate_stats.unpack_outcomes("not base64!", 3)


def test_paired_bootstrap_interval():
    rng = np.random.default_rng(0)
    old = rng.random(500)
    c = gate_stats.paired_bootstrap(old, old + rng.normal(0, 0.01, 500))
    assert c.low < 0 < c.high
    c = gate_stats.paired_bootstrap(old, 2 * old)
    assert c.low > 0.4 and abs(c.change - old.mean()) < 1e-12


# -- reports for the gate -----------------------------------------------------------------------

def _rounds(median, spread, seed, n=20):
    return list(np.random.default_rng(seed).normal(median, spread, n))


def _row(name, target="cpu", runtime="onnxruntime", median=1.0, spread=0.01, seed=0, acc=0.9, outcomes=None):
    v = {"name": name, "runtime": runtime, "target": target, "size_bytes": 1000, "accuracy": acc,
         "latency_ms": {"median": median, "rounds": _rounds(median, spread, seed)}}
    if outcomes is not None:
        v.update(samples=len(outcomes), outcomes=gate_stats.pack_outcomes(outcomes))
        v["accuracy"] = float(np.mean(outcomes))
    return v


def _study(rows, model="zoo:digits_cnn", metric="top1", reference="fp32/onnxruntime"):
    rep = {"schema": 1, "machine": {"cpu": "AMD EPYC"}, "task": {"name": "t", "metric": metric},
           "reference": reference, "meta": {"model": model, "recipe": "benchmarks/ci.yaml", "task": "digits"},
           "variants": rows}
    ref = next(v for v in rows if f"{v['name']}/{v['runtime']}" == reference)
    for v in rows:
        if v.get("status") != "failed":
            v["latency_ratio"] = v["latency_ms"]["median"] / ref["latency_ms"]["median"]
    return rep


def _by_name(rows):
    return {r["variant"]: r for r in rows}


# -- rows keyed by what they are ---------------------------------------------------------------

def test_nine_rows_three_targets_one_failed_fails_the_gate():
    from edgeopt.compile import BuildConfig
    from edgeopt.pipeline.measure import runtime_target

    targets = [runtime_target("tvm", BuildConfig(target="cpu", kernels=k)) for k in ("auto", "onednn", "tvm")]
    assert len(set(targets)) == 3, targets  # kernels are part of the row's target

    def study(failed=None):
        rows = [_row("fp32")]
        for name in ("fp32", "pruned", "int8"):
            for i, t in enumerate(targets):
                row = _row(name, target=t, runtime="tvm", seed=i)
                if (name, t) == failed:
                    row = {"name": name, "runtime": "tvm", "target": t, "status": "failed", "error": "build failed"}
                rows.append(row)
        return _study(rows)

    rows = compare(study(failed=("int8", targets[2])), study(), Thresholds())
    assert len(rows) == 10
    bad = [r for r in rows if r["regressions"]]
    assert [(r["variant"], r["regressions"]) for r in bad] == [(f"int8/tvm/{targets[2]}", ["failed"])]


def test_duplicate_row_keys_are_refused():
    rep = _study([_row("fp32"), _row("int8", "znver3", "tvm"), _row("int8", "znver3", "tvm", seed=1)])
    with pytest.raises(InputError, match="two rows keyed 'int8/tvm/znver3'"):
        compare(rep, rep, Thresholds())


def test_baseline_of_another_model_is_refused_unless_forced(tmp_path):
    (tmp_path / "base.json").write_text(json.dumps(_study([_row("fp32"), _row("int8")], model="zoo:resnet18")))
    (tmp_path / "new.json").write_text(json.dumps(_study([_row("fp32"), _row("int8")])))
    r = edgeopt_cli("check", tmp_path / "new.json", "--baseline", tmp_path / "base.json")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().splitlines() == [
        "edgeopt check: error: the baseline is of another study: model 'zoo:resnet18' in the baseline, 'zoo:digits_cnn' in the "
        "report; expected a baseline of the same model and recipe (refresh it, or pass --force to compare anyway)"]
    r = edgeopt_cli("check", tmp_path / "new.json", "--baseline", tmp_path / "base.json", "--force")
    assert r.returncode == 0 and "compared anyway: --force" in r.stdout, r.stdout + r.stderr


# -- the task's own metric first ---------------------------------------------------------------

def _regression_study(scale=1.0, per_sample=True, noise=0.0, seed=0):
    rng = np.random.default_rng(0)
    errors = rng.gamma(2.0, 0.05, 400)
    rows = []
    for name in ("fp32", "int8"):
        # noise: a 6 % rise on average, spread over samples both ways
        e = errors * scale + (0.06 * errors.mean() + noise * np.tile([1.0, -1.0], 200) if noise else 0) if name == "int8" else errors
        v = _row(name, acc=None)
        v["metric_value"], v["agreement"] = float(np.mean(e)), 1.0 if name == "fp32" else 0.98
        if per_sample:
            v.update(samples=400, sample_values=gate_stats.pack_values(e))
        rows.append(v)
    return _study(rows, metric="mse")


@pytest.mark.parametrize("per_sample", [True, False])
def test_doubled_mse_fails_with_default_limits(per_sample):
    rows = _by_name(compare(_regression_study(2.0, per_sample), _regression_study(), Thresholds()))
    assert rows["int8/onnxruntime/cpu"]["regressions"] == ["metric"]
    assert rows["fp32/onnxruntime/cpu"]["regressions"] == []
    assert rows["int8/onnxruntime/cpu"]["limits"]["metric"] == 0.05  # 5 % of the baseline's mse
    if per_sample:
        low, high = rows["int8/onnxruntime/cpu"]["metric_interval"]
        assert 0 < low < high
    text = format_rows(list(rows.values()), Thresholds())
    assert "metric mse +5% of the baseline's" in text and "REGRESSION: metric" in text
    unchanged = compare(_regression_study(), _regression_study(), Thresholds())
    assert all(r["regressions"] == [] for r in unchanged)


def test_mse_change_within_noise_is_not_flagged():
    # 6 % worse on average, but per sample the change is noise the test set cannot tell from none
    rows = _by_name(compare(_regression_study(1.0, noise=0.2), _regression_study(), Thresholds()))
    row = rows["int8/onnxruntime/cpu"]
    base = rows["fp32/onnxruntime/cpu"]["metric_drop"]
    assert base == 0 and row["metric_drop"] > 0.05 * 0.099 and row["metric_interval"][0] < 0 < row["metric_interval"][1]
    assert row["regressions"] == []


# -- statistics on every decision --------------------------------------------------------------

def test_latency_fails_only_beyond_the_limit_with_confidence():
    def study(slow, spread=0.01, seed=0):
        return _study([_row("fp32", seed=seed, spread=spread), _row("int8", median=0.5 * slow, seed=seed + 1, spread=spread)])

    base = study(1.0)
    rows = _by_name(compare(study(1.30, seed=5), base, Thresholds()))
    row = rows["int8/onnxruntime/cpu"]
    assert row["regressions"] == ["latency"] and row["latency_interval"][0] > 0.10
    assert "bootstrap over rounds" in row["latency_method"]
    # 12 % slower in the medians, rounds too noisy to say it is more than 10 %: not a regression
    row = _by_name(compare(study(1.12, spread=0.08, seed=5), study(1.0, spread=0.08), Thresholds()))["int8/onnxruntime/cpu"]
    assert row["latency"] > 0.10 and row["latency_interval"][0] < 0.10 and row["regressions"] == []
    text = format_rows(list(rows.values()), Thresholds())
    assert "REGRESSION: latency" in text and "% [+" in text  # the interval beside the change
    assert "intervals: [low, high] at 90% (two-sided)" in text


def test_accuracy_change_is_judged_paired():
    old, _ = _outcomes(360, 0, 0)

    def verdict(worse, better):
        _, new = _outcomes(360, worse, better)
        rows = _by_name(compare(_study([_row("fp32", outcomes=old), _row("int8", outcomes=new)]),
                                _study([_row("fp32", outcomes=old), _row("int8", outcomes=old)]), Thresholds()))
        return rows["int8/onnxruntime/cpu"]

    one_point = verdict(4, 0)        # 1.1 points: all four changes one way
    assert one_point["regressions"] == ["accuracy"] and one_point["accuracy_p"] < 0.05
    assert verdict(1, 0)["regressions"] == []           # one sample: within the limit
    mixed = verdict(8, 4)            # 1.1 points net, but changes both ways: not evidence
    assert mixed["accuracy_drop"] > 0.005 and mixed["accuracy_p"] > 0.05 and mixed["regressions"] == []
    lo, hi = one_point["accuracy_interval"]
    assert lo <= one_point["accuracy_drop"] <= hi


# -- same-run A/B --------------------------------------------------------------------------------

@pytest.mark.integration  # subprocesses
def test_check_retimes_the_baselines_artifacts(tmp_path):
    import shutil

    import edgeopt.compile as eoc
    from edgeopt.pipeline.measure import artifact_digest
    from helpers import example_inputs, tiny_conv_net

    art = eoc.export(tiny_conv_net(), eoc.ExportConfig(), example_inputs(), out=tmp_path / "new" / "variants" / "fp32" / "onnx").output
    shutil.copytree(tmp_path / "new", tmp_path / "base")

    def study(where):
        rows = [_row("fp32"), _row("int8", median=0.5)]
        for v in rows:
            v.update(artifact=str(tmp_path / where / "variants" / "fp32" / "onnx"), artifact_sha256=artifact_digest(art))
        rep = _study(rows)
        (tmp_path / f"{where}.json").write_text(json.dumps(rep))
        return rep

    study("new"), study("base")
    args = ("check", tmp_path / "new.json", "--baseline", tmp_path / "base.json", "--ab-rounds", "6")
    r = edgeopt_cli(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "latency: same-run A/B, bootstrap over rounds" in r.stdout and "not re-timed" not in r.stdout
    # A baseline folder that is no longer what its report measured is not re-timed: said, or refused.
    base = json.loads((tmp_path / "base.json").read_text())
    base["variants"][1]["artifact_sha256"] = "0" * 16
    base["machine"]["cpu"] = "Intel Xeon"
    (tmp_path / "base.json").write_text(json.dumps(base))
    r = edgeopt_cli(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "latency of 1 row(s) compared as ratios to each run's reference" in r.stdout
    assert "is not the one the report measured (checksum)" in r.stdout
    assert "warning: the baseline was timed on 'Intel Xeon', this report on 'AMD EPYC'" in r.stdout
    r = edgeopt_cli(*args, "--ab", "on")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--ab on: int8/onnxruntime/cpu cannot be re-timed" in r.stderr
