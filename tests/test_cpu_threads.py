"""The default CPU thread count follows the cores actually free when a run starts."""

import pytest

from pyframepred.training import cpu_threads


def _fake_stat(monkeypatch, idle_share, cpus=4):
    samples = iter([(0, 0), (int(1000 * idle_share), 1000)])
    monkeypatch.setattr(cpu_threads, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(cpu_threads.os, "cpu_count", lambda: cpus)
    monkeypatch.setattr(cpu_threads, "usable_cores", lambda: cpus)
    monkeypatch.setattr(cpu_threads.time, "sleep", lambda s: None)


@pytest.mark.parametrize("idle_share,expected", [(1.0, 4), (0.5, 2), (0.3, 1), (0.0, 1), (0.7, 3)])
def test_default_threads_counts_free_cores(monkeypatch, idle_share, expected):
    _fake_stat(monkeypatch, idle_share)
    n, why = cpu_threads.default_threads()
    assert n == expected
    assert f"{idle_share * 4:.1f} of 4 cores free" == why


def test_without_proc_stat_all_cores(monkeypatch):
    monkeypatch.setattr(cpu_threads, "_cpu_times", lambda: None)
    monkeypatch.setattr(cpu_threads, "usable_cores", lambda: 3)
    assert cpu_threads.default_threads() == (3, "3 cores")


def test_real_machine_sample():
    free = cpu_threads.free_cores(0.05)
    if free is None:
        pytest.skip("no /proc/stat here")
    assert 0.0 <= free <= cpu_threads.os.cpu_count() + 1e-6
    n, _ = cpu_threads.default_threads(0.05)
    assert 1 <= n <= cpu_threads.usable_cores()
