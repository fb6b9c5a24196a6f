"""A pool of worker processes that runs a function on many items, each under a hard time limit.

Answer checkers (sympy through math-verify) can run for minutes on a hostile answer such as
``10^{10^{10^{10}}}``, inside C code that no signal interrupts. Training must not wait for them.
:class:`GradingPool` keeps ``num_workers`` processes, started once and reused, each connected to
the caller by its own pipe:

* ``map(items, timeout_s)`` cuts the items into chunks (a few per worker, to amortise the
  inter-process messages) and hands a chunk to each idle worker. A worker answers item by item,
  so the caller knows when each item started: an item still running ``timeout_s`` seconds after
  it started gets its worker killed (SIGKILL) and replaced; the item's result is ``"timeout"``, the
  rest of its chunk goes back to the queue. A worker that dies gives ``"error"`` the same way.
* The caller only ever waits on the pipes with a deadline, so it never blocks on a hung worker, and
  it uses no signals, so it works from any thread and leaves the caller's own ``SIGALRM`` alone.
* An item that times out is run once more, after the rest of the batch, with the longer limit
  ``retry_timeout_s`` (``map``'s argument; None: no retry): on a loaded machine an ordinary item can
  overrun its limit, and a slow check must not silently become a verdict. Only an item that times out
  again has status ``"timeout"``; ``ItemResult.attempts`` says how many runs it took.
* A batch takes its normal work divided among the workers, plus ``timeout_s`` for each round of
  hung items: at most ``ceil(hung / num_workers) * timeout_s`` extra (one round while no more items
  hang than there are workers), plus as many rounds of ``retry_timeout_s`` for their second runs,
  plus the start of replacement workers.
* Workers are forked by a small fork server of the pool's own (:mod:`rlvr.rewards._worker_server`):
  a fresh interpreter, so a pool is safe to create after torch has started threads, which has
  imported (and warmed) the worker's modules, so a replacement starts in milliseconds, and which
  never re-runs the caller's ``__main__`` in the workers. A worker's memory is capped
  (``memory_limit_mb``, address space) so that a hostile answer cannot exhaust the machine.
* ``close()`` (also on ``with`` exit, garbage collection and interpreter exit) stops the workers and
  the server; exited workers are reaped by the server: no zombie processes. POSIX only.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Literal

from rlvr.errors import ConfigError, RLVRError
from rlvr.rewards._worker_server import WorkerServer

Status = Literal["ok", "timeout", "error"]
MAX_CHUNK = 64
CHUNKS_PER_WORKER = 4
STEAL_AFTER_FRACTION = 0.1
STEAL_AFTER_MAX_S = 0.5
"""An item running longer than min(0.1 * timeout_s, 0.5 s) lets idle workers take the rest of its chunk."""
_STARTUP_FAILURES_ALLOWED = 3


@dataclass(frozen=True)
class ItemResult:
    """The outcome of one item: its value when ``status == "ok"``; ``error`` says what went wrong."""

    status: Status
    value: Any = None
    error: str | None = None
    attempts: int = 1
    """Runs it took: 2 when its first run timed out and it was run again with the retry limit."""


def available_cores() -> int:
    """The number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _check_limit(name: str, value: object) -> None:
    if isinstance(value, bool) or not (
        isinstance(value, (int, float)) and value > 0 and math.isfinite(value)
    ):
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")


def _resolve(path: str) -> Callable[..., Any]:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _describe(error: BaseException) -> str:
    # Only our own errors are printed: str() of a sympy exception can itself take forever.
    if isinstance(error, RLVRError):
        return f"{type(error).__name__}: {str(error)[:300]}"
    return type(error).__name__


def _worker_main(
    conn: Connection, fn_path: str, initializer: str | None, memory_limit_mb: int | None
) -> None:
    """Body of a worker process: ready message, then results of each received chunk, item by item."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        if memory_limit_mb is not None:
            import resource

            limit = memory_limit_mb * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        fn = _resolve(fn_path)
        if initializer is not None:
            _resolve(initializer)()
    except BaseException as e:  # report why, so that the pool can say it
        conn.send(("failed", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            chunk = conn.recv()
        except EOFError:
            return
        if chunk is None:
            return
        for index, args in chunk:
            try:
                value = fn(*args)
            except Exception as e:
                conn.send((index, False, _describe(e)))
                continue
            try:
                conn.send((index, True, value))
            except Exception as e:  # a result that cannot be pickled
                conn.send((index, False, f"result not sendable: {_describe(e)}"))


class _Batch:
    """The items of one ``map`` call: the queue of chunks, results, and which workers hold what.

    An item can be held by two workers at once: when a worker is stuck on a slow item while
    others are idle, the rest of its chunk is handed to an idle worker too (work stealing); the
    first result wins.
    """

    def __init__(self, items: list[tuple[Any, ...]], num_workers: int) -> None:
        size = max(1, min(MAX_CHUNK, math.ceil(len(items) / (num_workers * CHUNKS_PER_WORKER))))
        pairs = list(enumerate(items))
        self.queue: deque[list[tuple[int, tuple[Any, ...]]]] = deque(
            pairs[i : i + size] for i in range(0, len(pairs), size)
        )
        self.results: list[ItemResult | None] = [None] * len(items)
        self.holders = [0] * len(items)
        self.remaining = len(items)

    def hold(self, chunk: list[tuple[int, tuple[Any, ...]]]) -> None:
        for index, _ in chunk:
            self.holders[index] += 1

    def drop(self, index: int) -> None:
        self.holders[index] -= 1

    def settle(self, index: int, result: ItemResult) -> None:
        if self.results[index] is None:
            self.results[index] = result
            self.remaining -= 1

    def requeue(self, items: list[tuple[int, tuple[Any, ...]]]) -> None:
        """Put back, first in line, the items of a lost worker that no one else holds."""
        for index, _ in items:
            self.drop(index)
        orphans = [item for item in items if self.results[item[0]] is None and self.holders[item[0]] == 0]
        if orphans:
            self.queue.appendleft(orphans)

    def steal_rest(self, worker: _Worker) -> None:
        """Queue the unstarted items of ``worker``'s chunk for another worker as well."""
        rest = [
            item
            for item in list(worker.items)[1:]
            if self.results[item[0]] is None and self.holders[item[0]] == 1
        ]
        if rest:
            self.queue.append(rest)

    def finished(self) -> list[ItemResult]:
        assert all(r is not None for r in self.results)
        return self.results  # type: ignore[return-value]


class _Worker:
    def __init__(self, pid: int, conn: Connection) -> None:
        self.pid = pid
        self.conn = conn
        self.state: Literal["starting", "idle", "busy"] = "starting"
        self.items: deque[tuple[int, tuple[Any, ...]]] = deque()
        self.since = time.monotonic()  # start of the process, or of its current item


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(workers: list[_Worker], servers: list[WorkerServer]) -> None:
    """Ask each worker to exit, kill what is left after 2 s, then stop the server."""
    for w in workers:
        try:
            w.conn.send(None)
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + 2.0
    while any(_exists(w.pid) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.01)
    for w in workers:
        _kill(w.pid)
        w.conn.close()
    workers.clear()
    for server in servers:
        server.close()
    servers.clear()


class GradingPool:
    """``num_workers`` processes that apply the function ``fn`` ("module:function") to items.

    >>> with GradingPool("operator:add", num_workers=1) as pool:  # doctest: +SKIP
    ...     pool.map([(1, 2), (3, 4)], timeout_s=5)
    [ItemResult(status='ok', value=3, error=None), ItemResult(status='ok', value=7, error=None)]

    ``initializer`` ("module:function") runs once in each worker before it reports ready (import
    heavy modules and warm caches there: a worker's start never counts against an item's limit).
    ``memory_limit_mb`` caps each worker's address space (None: no cap). ``preload`` names modules
    to import once in the fork server, so that every worker starts with them already imported.
    """

    def __init__(
        self,
        fn: str,
        *,
        num_workers: int | None = None,
        initializer: str | None = None,
        memory_limit_mb: int | None = 4096,
        preload: Sequence[str] = (),
        startup_timeout_s: float = 120.0,
    ) -> None:
        if num_workers is None:
            num_workers = available_cores()
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ConfigError(f"num_workers must be a positive integer, got {num_workers!r}")
        if ":" not in fn:
            raise ConfigError(f"fn must name a function as 'module:function', got {fn!r}")
        if os.name != "posix":
            raise RuntimeError("GradingPool needs a POSIX system (Linux, macOS)")
        self.fn = fn
        self.num_workers = num_workers
        self.initializer = initializer
        self.memory_limit_mb = memory_limit_mb
        self.startup_timeout_s = startup_timeout_s
        self.killed = 0
        """Workers killed so far for running past an item's time limit."""
        modules = [path.partition(":")[0] for path in (fn, initializer) if path]
        self._preload = list(dict.fromkeys([*preload, *modules]))
        self._owner_pid = os.getpid()
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._servers: list[WorkerServer] = []  # the one fork server, in a list the finalizer shares
        self._closed = False
        self._startup_failures = 0
        self._finalizer = weakref.finalize(self, _stop, self._workers, self._servers)
        for _ in range(num_workers):
            self._workers.append(self._start_worker())

    # -- lifecycle ---------------------------------------------------------------------------

    def _start_worker(self) -> _Worker:
        """A new worker from the fork server (started, or restarted once if it died)."""
        for attempt in range(2):
            if not self._servers:
                args = (
                    self.fn,
                    self.initializer,
                    self.memory_limit_mb,
                    self._preload,
                    self.startup_timeout_s,
                )
                self._servers.append(WorkerServer(*args))
            try:
                return _Worker(*self._servers[0].fork())
            except RuntimeError:
                self._servers.pop().close()
                if attempt == 1:
                    self._closed = True
                    self._finalizer()
                    raise
        raise AssertionError("unreachable")

    def _replace(self, worker: _Worker) -> None:
        """Kill ``worker`` and start a new one in its place."""
        _kill(worker.pid)
        worker.conn.close()
        index = self._workers.index(worker)
        self._workers[index] = self._start_worker()

    def close(self) -> None:
        """Stop and reap every worker. The pool cannot be used afterwards."""
        self._closed = True
        if os.getpid() == self._owner_pid:
            self._finalizer()
        else:
            self._finalizer.detach()

    def __enter__(self) -> GradingPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def usable(self) -> bool:
        """False once closed, and in a process forked from the one that made the pool."""
        return not self._closed and os.getpid() == self._owner_pid

    def pids(self) -> list[int]:
        """Process ids of the current workers."""
        return [w.pid for w in self._workers]

    # -- work --------------------------------------------------------------------------------

    def map(
        self, items: Sequence[tuple[Any, ...]], *, timeout_s: float, retry_timeout_s: float | None = None
    ) -> list[ItemResult]:
        """``fn(*item)`` for each item, in order, each given at most ``timeout_s`` seconds of wall clock.

        An item that runs past ``timeout_s`` is run once more, after all the others, with
        ``retry_timeout_s`` (at least ``timeout_s``; None: no second run), and has status "timeout"
        only when that run times out too. Thread-safe (calls are serialised). Items are chunked in
        order: put items that share expensive state (the same gold answer) next to each other.
        """
        _check_limit("timeout_s", timeout_s)
        if retry_timeout_s is not None:
            _check_limit("retry_timeout_s", retry_timeout_s)
            if retry_timeout_s < timeout_s:
                raise ConfigError(f"retry_timeout_s ({retry_timeout_s}) must be >= timeout_s ({timeout_s})")
        with self._lock:
            if self._closed:
                raise RuntimeError("this GradingPool is closed")
            if os.getpid() != self._owner_pid:
                raise RuntimeError("a GradingPool cannot be used from a forked child; create a new one")
            try:
                items = list(items)
                results = self._map(items, float(timeout_s))
                if retry_timeout_s is not None:
                    self._retry_timeouts(items, results, float(retry_timeout_s))
                return results
            except BaseException:  # e.g. KeyboardInterrupt: busy workers hold items of this call
                for w in list(self._workers):
                    if w.state == "busy":
                        w.items.clear()
                        self._replace(w)
                raise

    def _retry_timeouts(self, items: list[tuple[Any, ...]], results: list[ItemResult], limit: float) -> None:
        """Run the items that timed out once more with ``limit``; their results replace the first ones."""
        again = [i for i, r in enumerate(results) if r.status == "timeout"]
        if not again:
            return
        for i, result in zip(again, self._map([items[i] for i in again], limit), strict=True):
            results[i] = dataclasses.replace(result, attempts=2)

    def _map(self, items: list[tuple[Any, ...]], timeout_s: float) -> list[ItemResult]:
        batch = _Batch(items, self.num_workers)
        steal_after = min(STEAL_AFTER_FRACTION * timeout_s, STEAL_AFTER_MAX_S)
        while batch.remaining > 0:
            self._dispatch(batch)
            now = time.monotonic()
            deadlines = [w.since + self.startup_timeout_s for w in self._workers if w.state == "starting"]
            for w in self._workers:
                if w.state == "busy":
                    deadlines.append(w.since + timeout_s)
                    if now < w.since + steal_after:
                        deadlines.append(w.since + steal_after)
            if not deadlines:
                raise RuntimeError("no grading worker is running")
            by_conn = {w.conn: w for w in self._workers if w.state != "idle"}
            for conn in wait(list(by_conn), timeout=max(0.0, min(deadlines) - now)):
                self._receive(by_conn[conn], batch)
            now = time.monotonic()
            for w in list(self._workers):
                if w.state == "starting" and now - w.since >= self.startup_timeout_s:
                    self._startup_failed(w, f"not ready within {self.startup_timeout_s:g} s")
                if w.state != "busy":
                    continue
                running = now - w.since
                current = w.items[0][0]
                if running >= timeout_s:
                    self.killed += 1
                    self._release(w, batch, ItemResult("timeout", error=f"no result within {timeout_s:g} s"))
                elif running >= steal_after and batch.results[current] is not None:
                    self._release(w, batch, None)  # busy on an item another worker already settled
                elif running >= steal_after and not batch.queue and self._any_idle():
                    batch.steal_rest(w)
        for w in list(self._workers):
            if w.state == "busy":  # still repeating items another worker settled
                self._release(w, batch, None)
        return batch.finished()

    def _any_idle(self) -> bool:
        return any(w.state == "idle" for w in self._workers)

    def _dispatch(self, batch: _Batch) -> None:
        """Give the next chunk of the queue to each idle worker."""
        now = time.monotonic()
        for w in self._workers:
            if w.state != "idle":
                continue
            chunk: list[tuple[int, tuple[Any, ...]]] = []
            while batch.queue and not chunk:  # skip what another worker settled meanwhile
                chunk = [item for item in batch.queue.popleft() if batch.results[item[0]] is None]
            if not chunk:
                return
            batch.hold(chunk)
            w.items.extend(chunk)
            w.state, w.since = "busy", now
            try:
                w.conn.send(chunk)
            except (OSError, ValueError):
                self._release(w, batch, ItemResult("error", error="worker exited"))

    def _receive(self, worker: _Worker, batch: _Batch) -> None:
        """Read every message waiting from ``worker``."""
        conn = worker.conn
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                if worker.state == "busy":
                    self._release(worker, batch, ItemResult("error", error="worker died"))
                else:
                    self._startup_failed(worker, "exited during startup")
                return
            if worker.state == "starting":
                if message[0] == "ready":
                    worker.state = "idle"
                    self._startup_failures = 0
                else:
                    self._startup_failed(worker, message[1])
                return
            index, ok, value = message
            worker.items.popleft()
            batch.drop(index)
            batch.settle(index, ItemResult("ok", value) if ok else ItemResult("error", error=value))
            worker.since = time.monotonic()
            if not worker.items:
                worker.state = "idle"
                return
            if not conn.poll():
                return

    def _release(self, worker: _Worker, batch: _Batch, current: ItemResult | None) -> None:
        """Take ``worker``'s items back (its current one gets ``current``), then replace the worker."""
        if worker.items:
            index, _ = worker.items.popleft()
            batch.drop(index)
            if current is not None:
                batch.settle(index, current)
            batch.requeue(list(worker.items))
        worker.items.clear()
        self._replace(worker)

    def _startup_failed(self, worker: _Worker, why: str) -> None:
        self._startup_failures += 1
        if self._startup_failures > _STARTUP_FAILURES_ALLOWED * self.num_workers:
            self.close()
            raise RuntimeError(f"grading workers for {self.fn} fail to start: {why}")
        self._replace(worker)
