"""The benchmark suite does not rot: `bench/run_all.py --smoke` runs every benchmark of its registry at
the smallest settings and gives each a row with finite numbers. Benchmarks against peer libraries
(torchattacks, ART) live in .venv-bench only; here they must say "skipped (pip install ...)" instead
of failing. Only that they run is checked: speed goals are judged by the benchmarks' own ratios
(`make bench`), never by timing a test."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import Row, Target  # noqa: E402
from bench.run_all import REGISTRY, select  # noqa: E402

PEERS = {"art", "attacks"}  # whose rows may be skipped where the peer library is missing


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One subprocess for the whole suite (a fresh interpreter: run_all sets torch's thread count and seeds)."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--smoke", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout, json.loads(out.read_text())


def test_every_benchmark_has_a_row_with_finite_numbers(smoke):
    stdout, table = smoke
    rows = table["rows"]
    assert {r["key"] for r in rows} == {b.name for b in REGISTRY}  # none missing, none unknown
    for r in rows:
        assert r["benchmark"] in stdout  # the printed table has it too
        if r["verdict"].startswith("skipped"):
            peer = r["key"] in PEERS and "pip install" in r["verdict"] and ".venv-bench" in r["verdict"]
            slot = any(b.optional and b.name == r["key"] for b in REGISTRY)
            assert peer or slot, r
            continue
        assert r["verdict"] in ("meets", "misses", "n/a"), r
        for k in ("ours", "baseline", "ratio"):
            assert r[k] is not None and math.isfinite(r[k]) and r[k] > 0, (k, r)
        assert r["target"] is not None, r
    for b in REGISTRY:
        if b.name not in PEERS and not b.optional:
            assert any(r["key"] == b.name and r["ratio"] is not None for r in rows), b.name


def test_header_names_command_device_and_torch(smoke):
    stdout, table = smoke
    import torch

    assert "bench/run_all.py --smoke" in table["command"] and table["command"] in stdout
    assert table["torch"] == torch.__version__ and table["device"].startswith("cpu")
    assert table["smoke"] is True


def test_verdicts_follow_targets():
    assert Row("x", 2.0, 1.0, 1.08, target=Target.at_most(1.10)).verdict == "meets"
    assert Row("x", 2.0, 1.0, 1.12, target=Target.at_most(1.10)).verdict == "misses"
    assert Row("x", 1.0, 2.0, 1.7, target=Target.at_least(1.8)).verdict == "misses"
    assert Row("x", 1.0, 2.0, 2.0).verdict == "n/a"
    skipped = Row.skip("x", "pip install torchattacks in .venv-bench")
    assert skipped.verdict == "skipped (pip install torchattacks in .venv-bench)" and not skipped.finite
    assert skipped.to_json()["ratio"] is None


def test_only_names_the_known_benchmarks():
    assert [b.name for b in select("probe,awp")] == ["awp", "probe"]  # registry order
    with pytest.raises(ValueError, match="unknown nope"):
        select("awp,nope")
