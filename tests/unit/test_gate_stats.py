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
