"""The benchmark commands keep working: each runs at a tiny size and prints its figures."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra.databases import NO_REDIS
from tests.browsers import missing

pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parents[1]


def test_ingest_benchmark_prints_throughput_per_case() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/bench_ingest.py",
            "--posts",
            "100",
            "--photos",
            "8",
            "--phone-photos",
            "2",
            "--workers",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    rates = re.findall(
        r"^(.+?)\s+workers=(\d)\s+images=(\d+)\s.*images/s=\s*([\d.]+).*accepted=(\d+) rejected=0$", result.stdout, re.M
    )
    cases = {
        (name.strip(), int(workers)): (int(images), float(rate), int(accepted))
        for name, workers, images, rate, accepted in rates
    }
    assert set(cases) == {
        (case, w)
        for case in ("simulated 64x64", "shipped photos (native)", "phone-size photos (12 MP)")
        for w in (1, 2)
    }
    assert cases[("simulated 64x64", 1)][0] == 100 and cases[("phone-size photos (12 MP)", 2)][0] == 2
    for images, rate, accepted in cases.values():
        assert rate > 0 and accepted == images  # every benchmark image is distinct and valid


def test_training_benchmark_prints_platform_and_bare_rates() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_train.py", "--posts", "300", "--epochs", "2", "--image-size", "32"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    found = re.search(r"platform img/s=\s*([\d.]+)\s+bare img/s=\s*([\d.]+)\s+ratio=([\d.]+)", result.stdout)
    assert found, result.stdout
    ours, bare, ratio = (float(g) for g in found.groups())
    assert ours > 0 and bare > 0
    assert ratio == pytest.approx(ours / bare, abs=0.01)


def test_active_learning_benchmark_prints_curves_and_labels_needed() -> None:
    args = ["--seeds", "2", "--rounds", "2", "--query", "8", "--posts-per-day", "30", "--seed-epochs", "1"]
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_active_learning.py", *args, "--epochs", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    strategies = ("random", "least_confidence", "margin", "entropy", "bald", "entropy+kcenter")
    assert "| strategy | 0 | 8 | 16 |" in result.stdout  # labels bought after each round
    for name in strategies:
        row = re.search(
            rf"^\| {re.escape(name)} \| ([\d.]+) \(([\d.]+)\) \| .* \| ([\d.]+) \(([\d.]+)\) \|$", result.stdout, re.M
        )
        assert row, name
        assert all(0 <= float(v) <= 1 for v in row.groups())
        assert re.search(rf"^  {re.escape(name)}\s+(\d+|not reached in 16)$", result.stdout, re.M)
    assert re.search(r"^  random\s+(8|16)$", result.stdout, re.M)  # random reaches its own final accuracy


def test_serving_benchmark_prints_throughput_and_latency_per_path_and_concurrency() -> None:
    # The Ray path starts a Ray head and deploys the app (a minute here); tests/test_serving.py covers it.
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_serving.py", "--requests", "24", "--concurrency", "1", "4",
         "--paths", "inprocess", "fastapi", "--cpus", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    rows = re.findall(r"^\| (\w+)\s+\|\s+(\d+) \|\s+([\d.]+) \|\s+([\d.]+) \|\s+([\d.]+) \|\s+([\d.]+) \|\s+(\d+) \|$",
                      result.stdout, re.M)  # fmt: skip
    cells = {(path, int(c)): (float(rps), float(p50), float(p95), float(p99), int(fail))
             for path, c, rps, p50, p95, p99, fail in rows}  # fmt: skip
    assert set(cells) == {("inprocess", 1), ("inprocess", 4), ("fastapi", 1), ("fastapi", 4)}, result.stdout
    for rps, p50, p95, p99, fail in cells.values():
        assert rps > 0 and 0 < p50 <= p95 <= p99 and fail == 0


def test_fusion_benchmark_prints_accuracy_per_input_set() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_fusion.py", "--days", "3", "--posts-per-day", "120", "--users", "40",
         "--epochs", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    rows = dict(re.findall(r"^(image(?:\+\w+)*)\s+([\d.]+)\s+[\d.]+\s+\d+\s+\d+$", result.stdout, re.M))
    assert set(rows) == {"image", "image+caption", "image+user", "image+caption+user"}, result.stdout
    assert all(0 <= float(v) <= 1 for v in rows.values())
    assert re.search(r"^image\+caption\+user, all side inputs unknown\s+[\d.]+$", result.stdout, re.M)
    assert re.search(r"^test posts: \d+; classes: \d+$", result.stdout, re.M)


def test_feature_benchmark_on_the_cluster_stores_prints_redis_memory_per_key(postgres_binaries: Path) -> None:
    if shutil.which("redis-server") is None:
        missing(NO_REDIS, os.environ, "the Redis-backed tests")
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_features.py", "--posts", "600", "--users", "60", "--days", "3",
         "--requests", "20", "--batch-calls", "3", "--store", "redis"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    memory = re.search(r"^\| Redis used_memory after materialize \| [\d.,]+ MiB \(([\d,]+) B per entity hash, "
                       r"([\d,]+) hashes\) \|$", result.stdout, re.M)  # fmt: skip
    assert memory, result.stdout
    per_hash, hashes = (int(g.replace(",", "")) for g in memory.groups())
    assert hashes == 600 + 60  # one per post (its views' fields together), one per user
    assert 4 * 384 * 600 / hashes < per_hash < 20_000  # posts hold at least their 384-d float32 caption embedding
    assert re.search(r"^\| rows out / in, order kept \| 600 / 600, yes \|$", result.stdout, re.M)
    assert not list(Path("/tmp").glob("trendloop-bench-*"))  # both servers' folders removed


def test_the_soak_runs_traffic_through_every_operation_and_counts_nothing_lost(tmp_path: Path) -> None:
    """`make soak` at 45 s: the split changes, the promotion, the rollback and the new test each reach the traffic."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--minutes", "0.75", "--viewers", "300", "--home", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    out = result.stdout
    passed = out.rstrip().endswith("soak: passed (0 errors, 0 records lost)")
    assert result.returncode == 0 and passed, out + result.stderr
    figures = dict(re.findall(r"^(requests|answered|errors|records lost)\s+([\d,]+)", out, re.M))
    assert int(figures["requests"].replace(",", "")) == int(figures["answered"].replace(",", "")) > 100, out
    assert (figures["errors"], figures["records lost"]) == ("0", "0")
    assert re.search(r"^served\s+challenger v2, challenger v3, champion v1, champion v2$", out, re.M), out
    steps = re.findall(r"^operation\s+(.+?)\s+at (\d+):(\d\d), took ([\d.]+) s$", out, re.M)
    assert [name for name, *_ in steps] == ["split to 20%", "split to 50%", "promote v2", "roll back to v1",
                                            "v3 challenger, 50/50"], out  # fmt: skip
    p50, p99 = map(float, re.search(r"^latency ms\s+p50 ([\d.]+)\s+p99 ([\d.]+)", out, re.M).groups())
    assert 0 < p50 <= p99
    assert "mlflow" not in out + result.stderr  # library chatter goes to the soak's log
    assert (tmp_path / "soak.log").stat().st_size > 0
