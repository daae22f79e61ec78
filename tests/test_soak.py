"""The soak benchmark's figures: slopes per 100 jobs and the verdicts on its targets."""

from __future__ import annotations

from bench.soak import slope, summarise, verdicts


def _samples(count: int, rss_per_job: float, fds: int = 15) -> list[dict]:
    return [{"jobs": n, "rss_mb": 700 + rss_per_job * n, "fds": fds, "threads": 11, "db_mb": 0.1,
             "wal_mb": 1.0, "ckpt_mb": 0.2, "corpus_mb": 0.01} for n in range(count)]


def _jobs(count: int, seconds) -> list[dict]:
    return [{"n": n + 1, "job": "generate", "seconds": seconds(n), "t": float(n)} for n in range(count)]


def test_slope_is_least_squares_and_zero_without_spread() -> None:
    assert slope([0, 1, 2, 3], [1, 3, 5, 7]) == 2.0
    assert slope([5, 5], [1, 2]) == 0.0


def test_flat_figures_pass_and_a_leak_fails() -> None:
    flat = summarise(_samples(200, 0.0), _jobs(200, lambda n: 0.02), warmup=20)
    assert all(ok for _, ok in verdicts(flat))
    leaking = summarise(_samples(200, 0.05), _jobs(200, lambda n: 0.02), warmup=20)
    assert abs(leaking["figures"]["rss_mb"]["per_100_jobs"] - 5.0) < 1e-9
    failed = [text for text, ok in verdicts(leaking) if not ok]
    assert len(failed) == 1 and failed[0].startswith("RSS growth +5.00")


def test_growing_job_durations_fail_one_slow_outlier_does_not() -> None:
    growing = summarise(_samples(200, 0.0), _jobs(200, lambda n: 0.02 + 0.001 * n), warmup=20)
    assert [text for text, ok in verdicts(growing) if not ok][0].startswith("generate duration")
    outlier = summarise(_samples(200, 0.0), _jobs(200, lambda n: 5.0 if n == 190 else 0.02), warmup=20)
    assert all(ok for _, ok in verdicts(outlier))
