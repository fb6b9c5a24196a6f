"""The grading pool: per-item hard time limits, killed and replaced workers, clean shutdown.

These tests run real worker processes on standard-library functions (``operator.pow`` on huge
integers is C-level work that no signal interrupts), so they do not depend on math-verify.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from rlvr.errors import ConfigError
from rlvr.rewards.grading_pool import GradingPool, available_cores

HANG = (3, 10**9)  # pow(3, 10**9): minutes of C-level big-integer work


def gone(pid: int, within_s: float = 3.0) -> bool:
    """True once ``pid`` no longer exists (neither running nor a zombie)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def pow_pool():
    with GradingPool("operator:pow", num_workers=2) as pool:
        yield pool


def test_results_in_order(pow_pool: GradingPool) -> None:
    items = [(i, 2) for i in range(300)]
    results = pow_pool.map(items, timeout_s=5)
    assert [r.status for r in results] == ["ok"] * 300
    assert [r.value for r in results] == [i * i for i in range(300)]
    assert pow_pool.map([], timeout_s=5) == []


def test_c_level_work_is_killed_and_the_batch_goes_on(pow_pool: GradingPool) -> None:
    killed_before, pids_before = pow_pool.killed, set(pow_pool.pids())
    items = [(2, 10)] * 20 + [HANG] + [(2, 3)] * 20
    start = time.monotonic()
    results = pow_pool.map(items, timeout_s=0.5)
    elapsed = time.monotonic() - start
    assert results[20].status == "timeout"
    assert [r.value for r in results[:20]] == [1024] * 20
    assert [r.value for r in results[21:]] == [8] * 20
    assert pow_pool.killed == killed_before + 1
    # One limit plus normal work (well under a second here), not the minutes the item would take.
    assert elapsed < 0.5 + 2.0
    replaced = pids_before - set(pow_pool.pids())
    assert len(replaced) == 1 and gone(replaced.pop())  # killed and reaped: no zombie
    assert [r.value for r in pow_pool.map([(5, 2)], timeout_s=5)] == [25]  # the pool still works


def mark_then_hang(path: Path) -> str:
    """Source for ``builtins:exec`` that writes when it started (CLOCK_MONOTONIC, shared by every
    process of the machine) to ``path``, then sleeps for ten minutes."""
    return f"import time\nopen({str(path)!r}, 'w').write(repr(time.monotonic()))\ntime.sleep(600)\n"


def test_two_hung_items_in_one_chunk_run_side_by_side(tmp_path: Path) -> None:
    # Items 0 and 1 share a chunk. Without work stealing, item 1 starts only once item 0's worker
    # has been killed, at least one limit after item 0 started; with it, an idle worker takes the
    # rest of the chunk while item 0 still runs. Proved by the order of events, not by a duration.
    timeout_s = 3.0
    first, second = tmp_path / "first", tmp_path / "second"
    items = [(mark_then_hang(first),), (mark_then_hang(second),)] + [("pass",)] * 40
    with GradingPool("builtins:exec", num_workers=2) as pool:
        results = pool.map(items, timeout_s=timeout_s)
    assert [r.status for r in results[:2]] == ["timeout", "timeout"]
    assert all(r.status == "ok" for r in results[2:])
    started = float(first.read_text()), float(second.read_text())
    assert started[1] < started[0] + timeout_s  # item 1 ran while item 0's worker still held it


def test_a_timed_out_item_is_run_again_with_the_longer_limit(tmp_path: Path) -> None:
    # A check that needs 1 s, under a 0.3 s limit (what load does to an ordinary check), passes on
    # its second run with a 5 s limit; a hung one times out twice; the others run once.
    slow = "import time\ntime.sleep(1.0)\n"
    items = [(slow,), (mark_then_hang(tmp_path / "hung"),)] + [("pass",)] * 10
    with GradingPool("builtins:exec", num_workers=2) as pool:
        results = pool.map(items, timeout_s=0.3, retry_timeout_s=5.0)
        once = pool.map(items[:2], timeout_s=0.3)
    assert (results[0].status, results[0].attempts) == ("ok", 2)
    assert (results[1].status, results[1].attempts) == ("timeout", 2)
    assert "5 s" in (results[1].error or "")
    assert [(r.status, r.attempts) for r in results[2:]] == [("ok", 1)] * 10
    assert [(r.status, r.attempts) for r in once] == [("timeout", 1)] * 2  # without a retry limit


def test_more_hung_items_than_workers(pow_pool: GradingPool) -> None:
    results = pow_pool.map([HANG] * 3 + [(3, 3)] * 10, timeout_s=0.3)
    assert [r.status for r in results] == ["timeout"] * 3 + ["ok"] * 10
    assert all(r.value == 27 for r in results[3:])


def test_errors_are_reported_per_item() -> None:
    with GradingPool("operator:truediv", num_workers=1) as pool:
        results = pool.map([(1, 2), (1, 0), (3, 4)], timeout_s=5)
    assert [r.status for r in results] == ["ok", "error", "ok"]
    assert results[1].error == "ZeroDivisionError"
    assert (results[0].value, results[2].value) == (0.5, 0.75)


def test_unsendable_result_is_an_error_not_a_crash() -> None:
    with GradingPool("threading:Lock", num_workers=1) as pool:
        results = pool.map([(), ()], timeout_s=5)
    assert [r.status for r in results] == ["error", "error"]
    assert "not sendable" in (results[0].error or "")


def test_a_dying_worker_scores_its_item_as_error() -> None:
    with GradingPool("os:_exit", num_workers=1) as pool:
        pid = pool.pids()[0]
        results = pool.map([(3,)], timeout_s=5)
        assert results[0].status == "error" and "worker died" in (results[0].error or "")
        assert gone(pid)


def test_memory_limit() -> None:
    with GradingPool("builtins:bytearray", num_workers=1, memory_limit_mb=2048) as pool:
        results = pool.map([(3 * 2**30,), (8,)], timeout_s=10)
    assert results[0].status == "error" and results[0].error == "MemoryError"
    assert results[1].value == bytearray(8)


def test_callable_from_a_thread_and_leaves_the_callers_alarm(pow_pool: GradingPool) -> None:
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    try:
        signal.alarm(1)
        out: dict[str, list] = {}
        thread = threading.Thread(target=lambda: out.setdefault("r", pow_pool.map([(2, 5)], timeout_s=5)))
        thread.start()
        thread.join()
        assert out["r"][0].value == 32
        # The alarm fires during a batch (the wait is resumed, the batch is unaffected).
        results = pow_pool.map([HANG, (2, 2)], timeout_s=1.5)
        assert [r.status for r in results] == ["timeout", "ok"]
        assert fired == [signal.SIGALRM]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_close_reaps_every_worker() -> None:
    pool = GradingPool("operator:add", num_workers=2)
    assert [r.value for r in pool.map([(1, 2)], timeout_s=5)] == [3]
    pids = pool.pids()
    pool.close()
    assert all(gone(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="closed"):
        pool.map([(1, 2)], timeout_s=5)
    pool.close()  # closing twice is fine


def test_workers_that_cannot_start_are_an_error() -> None:
    pool = GradingPool("operator:add", num_workers=1, initializer="math:sqrt")  # sqrt() needs an argument
    with pytest.raises(RuntimeError, match="fail to start: TypeError"):
        pool.map([(1, 2)], timeout_s=5)


def test_a_worker_module_that_does_not_import_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="grading worker server exited"):
        GradingPool("rlvr_no_such_module:grade", num_workers=1)


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="num_workers"):
        GradingPool("operator:add", num_workers=0)
    with pytest.raises(ConfigError, match="module:function"):
        GradingPool("operator.add", num_workers=1)
    with GradingPool("operator:add", num_workers=1) as pool:
        for bad in (0, -1.0, float("inf"), "5", True):
            with pytest.raises(ConfigError, match="timeout_s"):
                pool.map([(1, 2)], timeout_s=bad)  # type: ignore[arg-type]
            with pytest.raises(ConfigError, match="retry_timeout_s"):
                pool.map([(1, 2)], timeout_s=1, retry_timeout_s=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="retry_timeout_s .* must be >= timeout_s"):
            pool.map([(1, 2)], timeout_s=2, retry_timeout_s=1)
    assert available_cores() >= 1
