"""The real-workload benchmarks (``python -m benchmarks --workloads``) run end to end, tiny.

One smoke run of each workload: every contender runs and the results are well formed.
Never timings: speed is measured by the benchmark itself, not asserted here.
"""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.digits_job import DIGITS_CONTENDERS, run_digits
from benchmarks.workloads import (
    TINY_SIZES,
    WORKLOAD_CONTENDERS,
    LoaderWorkload,
    ResNetWorkload,
    run_loader,
    run_resnet,
    workloads_markdown,
)

pytestmark = pytest.mark.slow


def test_resnet_loader_and_digits_workloads_run_tiny() -> None:
    resnet = run_resnet(TINY_SIZES, workload=ResNetWorkload(image_size=8, batch_size=2, epochs=1, val_batches=1))
    assert resnet["skipped"] == {}
    assert list(resnet["results"]) == ["plain-lean", *WORKLOAD_CONTENDERS]
    assert "ResNet-18" in resnet["workload"]
    for entry in resnet["results"].values():
        assert math.isfinite(entry["overhead_pct_of_baseline"]) and entry["step_us"]["median"] > 0

    loader = run_loader(TINY_SIZES, workload=LoaderWorkload(hidden=16, seconds_per_batch=0.0005, epochs=2))
    assert list(loader["results"]) == ["plain-lean", *WORKLOAD_CONTENDERS]
    for name, entry in loader["results"].items():
        # every contender fetched through the timed DataLoader, so waits were recorded
        assert entry["wait_us"]["median"] > 0 and entry["first_fetch_us"]["median"] > 0, name
        assert entry["period_us"]["median"] > 0, name
    assert loader["results"]["plain-lean"]["wait_minus_baseline_us"] == 0

    digits = run_digits(rounds=1, epochs=1, limit=2)
    assert list(digits["results"]) == list(DIGITS_CONTENDERS)
    for name, entry in digits["results"].items():
        assert 0.0 <= entry["accuracy"]["median"] <= 1.0, name
        assert entry["wall_s"]["median"] > 0 and entry["cpu_s"]["median"] > 0, name
    assert digits["results"]["plain"]["wall_ratio"] == 1.0

    results = {"resnet": resnet, "loader": loader, "digits": digits}
    json.dumps(results)
    text = workloads_markdown(results)
    assert "| busloop, default callbacks + tracker |" in text
    assert "| busloop train (default callbacks, local tracker) |" in text


def test_digits_contenders_can_be_excluded() -> None:
    digits = run_digits(rounds=1, epochs=1, limit=1, without=("lightning", "ignite"))
    assert list(digits["results"]) == ["plain", "busloop"]
    assert digits["skipped"] == {"lightning": "skipped: lightning excluded", "ignite": "skipped: ignite excluded"}
