"""Run untrusted Python (a model's program and its unit tests) in a confined subprocess.

::

    result = run_program("def add(a, b):\\n    return a + b", ["assert add(1, 2) == 3"])
    result.status, result.passed, result.total      # ("ok", 1, 1)
    results = run_programs([SandboxJob(code, tests), ...], SandboxConfig(timeout_s=5), max_workers=8)

Each program runs in a fresh ``python -I -B -S`` process (isolated mode: no ``PYTHON*`` variables,
no user site directory, no script directory on ``sys.path``; no ``site`` start-up, the caller's
site-packages are put on ``sys.path`` directly) in its own new temporary directory, which
is deleted afterwards, with an environment that holds only ``PATH``, ``HOME``/``TMPDIR`` (the
directory), the locale and single-threaded BLAS settings. The process starts a new session, so
the whole process group can be killed with SIGKILL. The caller is never harmed: whatever the
program does, these functions return a :class:`SandboxResult` (an exception only reports a bad
argument, never the program's behaviour).

Layers of confinement, outermost first. Which ones were active is in ``SandboxResult.layers``.

========================  ==================================================================  ==========
layer                     what it stops                                                       needs
========================  ==================================================================  ==========
wall clock (parent)       any overrun: the process group is killed with SIGKILL at            always
                          ``timeout_s``
output cap (parent)       stdout + stderr beyond ``max_output_bytes`` (read in chunks,        always
                          never more than the cap kept); the group is killed
resource limits           ``RLIMIT_CPU`` (SIGXCPU at ``cpu_s``), ``RLIMIT_AS`` (memory:       always
                          allocations fail with MemoryError), ``RLIMIT_FSIZE`` (no file
                          larger than ``max_file_bytes``), ``RLIMIT_NOFILE``, no core
                          dumps; ``RLIMIT_NPROC=0`` when seccomp is unavailable (no effect
                          for root)
network_namespace         every network: the process gets a new network namespace with        root or
                          only a down loopback, so even 127.0.0.1 is unreachable              user ns
read_only_filesystem      writes anywhere but the working directory (a new mount              root or
                          namespace in which every mount is read-only, including /proc),       user ns,
                          for any code, ctypes included                                       Linux 5.12
no_capabilities           root's capabilities (remounting, bypassing file permissions)        Linux
seccomp                   fork/vfork/clone of processes, exec, ``socket()`` (so also Unix      x86_64 or
                          sockets such as a Docker socket), ptrace, process_vm_*, signals     aarch64
                          to other processes, setrlimit, (un)mounting, namespaces,
                          io_uring, bpf, kernel modules. Threads are allowed.
audit_hook (PEP 578)      at the Python level: sockets, subprocess, os.fork/exec/system/      always
                          kill, file writes outside the working directory, file reads
                          outside the interpreter's directories and the working directory,
                          importing ctypes/cffi/_posixsubprocess, sqlite extensions, and
                          the introspection routes to the harness (``sys._getframe``,
                          ``gc.get_objects``, traceback and generator frames, settrace,
                          building code objects)
========================  ==================================================================  ==========

Limits, honestly: the audit hook is not a security boundary (PEP 578 says so): it runs in the
same interpreter as the program, and code that corrupts the interpreter (crafted bytecode through
``marshal``, a C extension in the environment) can get past it. That is why ``ctypes`` is refused
and why the kernel layers exist; where they are unavailable (no namespaces in a restricted
container, another CPU architecture) the Python layer is all that stands. Reads: the program can
read what the kernel lets the process read; only the audit hook limits reads to the interpreter's
directories. The working directory's disk use is bounded only by ``max_file_bytes`` times
``max_files`` (the count is kept by the audit hook). For untrusted code at scale, run the trainer
itself in a container or VM as an unprivileged user as well.

Linux is the supported platform; elsewhere only the parent's limits, the resource limits the
system honours and the audit hook apply.

Around the runs. The first call for a configuration runs a self-check, a trivial correct program,
and raises :class:`SandboxError` naming the cause when it does not pass (a missing or
non-executable interpreter, a harness that dies at start): a broken sandbox is an error, never
silent zero rewards. An exception in the caller (Ctrl-C) kills every sandbox of the call at once
instead of waiting out their limits. Each working directory is ``<tempdir>/rlvr-sandbox-*``, held
with ``flock`` by its caller while it runs; a caller killed by SIGKILL or SIGTERM cannot delete its
directories, and the next process's first call removes those nobody holds
(:func:`remove_stale_workdirs`). A run that times out is run once more with ``retry_timeout_s``
when one is given (``SandboxResult.attempts``).

How results are read. The harness in the child (``_sandbox_child.py``) runs the program as a
module named ``solution`` (so ``if __name__ == "__main__":`` blocks do not run), then each test
string, and writes one report line per test and a final ``done`` line to a duplicate of stdout,
each prefixed with a random nonce the parent chose for this run. ``sys.exit`` is caught: while the
program loads it is a load error, inside a test it fails that test. A process that ends early
(``os._exit(0)``) never writes ``done``, so its status is "error", not "ok"; text a program prints
cannot pass for a report without the nonce. Tests see the original built-ins even if
the program redefines them, and with ``strict_equality`` an ``assert x == y`` test compares built-in
values structurally, so an object whose ``__eq__`` always returns True does not pass. A program
that deliberately patches modules the tests use, or finds the nonce by a route the hook misses,
could still forge a result: the sandbox contains damage, and makes the common reward hacks fail.

Status (in this order of precedence): "timeout" (wall clock or CPU limit), "output_limit" (output
cap, or a file over ``max_file_bytes``), "memory" (a MemoryError), "error" (a forbidden operation
was attempted, the program failed to load, or the process ended before all tests ran), "ok" (all
tests ran and passed), "failed" (all tests ran, some failed). ``passed`` counts tests confirmed
to pass in every status.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import secrets
import selectors
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rlvr.errors import ConfigError, RLVRError

Status = Literal["ok", "failed", "timeout", "memory", "error", "output_limit"]
CHILD_SCRIPT = Path(__file__).with_name("_sandbox_child.py")
WORKDIR_PREFIX = "rlvr-sandbox-"
"""Working directories are ``<tempdir>/rlvr-sandbox-*``, each locked (``flock``) by its caller."""
SELF_CHECK_TIMEOUT_S = 30.0
"""Wall-clock limit of the self-check at least (a loaded machine may start Python slowly)."""
_SELF_CHECK = ("def check():\n    return 42\n", ("assert check() == 42",), "check")


class SandboxError(RLVRError):
    """The sandbox itself does not work (it fails its self-check): no program could pass."""


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and layers of one sandboxed run."""

    timeout_s: float = 5.0
    """Wall-clock limit for the whole run (interpreter start, program and all tests)."""
    cpu_s: float | None = None
    """CPU-time limit (RLIMIT_CPU); None means ``timeout_s``."""
    memory_mb: int = 1024
    """Address-space limit (RLIMIT_AS) in MiB; numpy alone needs a few hundred."""
    max_output_bytes: int = 1 << 20
    """Cap on stdout + stderr; beyond it the run is stopped with status "output_limit"."""
    max_file_bytes: int = 8 << 20
    """Largest file the program may write (RLIMIT_FSIZE)."""
    max_files: int = 32
    """Files the program may open for writing (counted by the audit hook)."""
    max_open_files: int = 64
    """Open file descriptors (RLIMIT_NOFILE)."""
    output_tail_chars: int = 2000
    """How much of the end of the program's output ``SandboxResult.output`` keeps."""
    namespaces: bool = True
    """Try new network and mount namespaces (no network, read-only filesystem)."""
    seccomp: bool = True
    """Install the seccomp system-call filter (x86_64 and aarch64 Linux)."""
    site_packages: bool = True
    """Let the program import the caller's installed packages (numpy, ...); ``.pth`` files are not run."""
    audit_hook: bool = True
    """Install the Python-level audit hook; switch off only to test the kernel layers alone."""
    strict_equality: bool = True
    """Compare ``assert a == b`` tests structurally for built-in values (see the module docstring)."""
    python: str | None = None
    """The interpreter to run; None means the caller's own (``sys.executable``)."""

    def __post_init__(self) -> None:
        positive = ("timeout_s", "memory_mb", "max_output_bytes", "max_file_bytes", "max_files")
        for name in (*positive, "max_open_files", "output_tail_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"SandboxConfig.{name} must be a non-negative number, got {value!r}")
            if name in positive and value == 0:
                raise ConfigError(f"SandboxConfig.{name} must be > 0, got {value!r}")
        if self.cpu_s is not None and (not isinstance(self.cpu_s, (int, float)) or self.cpu_s <= 0):
            raise ConfigError(f"SandboxConfig.cpu_s must be > 0 or None, got {self.cpu_s!r}")
        if self.max_open_files < 16:
            raise ConfigError(f"SandboxConfig.max_open_files must be >= 16, got {self.max_open_files}")


@dataclass(frozen=True)
class SandboxJob:
    """A program and the tests to run against it (each test a string of Python statements)."""

    code: str
    tests: tuple[str, ...]
    entry_point: str | None = None
    """A function the program must define; its absence is a load error."""


@dataclass(frozen=True)
class SandboxResult:
    status: Status
    passed: int
    """Tests confirmed to pass."""
    total: int
    output: str
    """The end of the program's stdout and stderr (report lines removed)."""
    duration_s: float
    detail: str = ""
    """Why the run did not pass: the first error, or what stopped it."""
    blocked: tuple[str, ...] = ()
    """Forbidden operations the program attempted (audit events)."""
    layers: tuple[str, ...] = ()
    """The confinement layers that were active (see the module docstring)."""
    pid: int | None = None
    """The process id, which was also the id of its process group."""
    test_errors: tuple[str | None, ...] = field(default=())
    """Per test: None if it passed, else its error (or "not run")."""
    attempts: int = 1
    """Runs it took: 2 when the first run timed out and it was run again with the retry limit."""

    @property
    def all_passed(self) -> bool:
        return self.status == "ok"


def run_program(
    code: str, tests: Sequence[str], config: SandboxConfig | None = None, *, entry_point: str | None = None
) -> SandboxResult:
    """Run ``code`` and then ``tests`` in a sandbox; never raises because of what the program does."""
    return run_programs([SandboxJob(code, tuple(tests), entry_point)], config, max_workers=1)[0]


def default_workers() -> int:
    """One sandbox per CPU the caller may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def run_programs(
    jobs: Sequence[SandboxJob],
    config: SandboxConfig | None = None,
    *,
    max_workers: int | None = None,
    retry_timeout_s: float | None = None,
) -> list[SandboxResult]:
    """Run every job, at most ``max_workers`` (default: one per CPU) at a time; results in job order.

    A job that times out is run once more, after the others, with the wall-clock limit
    ``retry_timeout_s`` (at least ``timeout_s``; None: no second run): on a loaded machine a correct
    program can overrun its limit. The first call for a configuration runs a self-check (a trivial
    correct program must pass) and raises :class:`SandboxError` naming the cause when it does not,
    rather than scoring every program 0. An interrupt (Ctrl-C) stops every sandbox of the call at
    once. The work happens in the child processes; the threads here only wait on them.
    """
    config = config or SandboxConfig()
    jobs = list(jobs)
    for i, job in enumerate(jobs):
        _check_job(job, i)
    workers = default_workers() if max_workers is None else max_workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"max_workers must be a positive integer, got {max_workers!r}")
    if retry_timeout_s is not None and (
        isinstance(retry_timeout_s, bool)
        or not isinstance(retry_timeout_s, (int, float))
        or not config.timeout_s <= retry_timeout_s < float("inf")
    ):
        raise ConfigError(
            f"retry_timeout_s must be seconds >= timeout_s ({config.timeout_s}), got {retry_timeout_s!r}"
        )
    python = config.python or sys.executable
    if not python:
        raise ConfigError("no Python interpreter to run: sys.executable is empty; set SandboxConfig.python")
    if not jobs:
        return []
    _clean_once()
    _self_check(config, python)
    results = _run_all(jobs, config, python, workers)
    again = [i for i, r in enumerate(results) if r.status == "timeout"]
    if again and retry_timeout_s is not None:
        longer = dataclasses.replace(config, timeout_s=float(retry_timeout_s))
        for i, result in zip(again, _run_all([jobs[i] for i in again], longer, python, workers), strict=True):
            results[i] = dataclasses.replace(result, attempts=2)
    return results


def _run_all(jobs: list[SandboxJob], config: SandboxConfig, python: str, workers: int) -> list[SandboxResult]:
    """Run ``jobs`` on up to ``workers`` threads; on any exception (Ctrl-C) kill every sandbox at once."""
    runs = _Running()
    if len(jobs) <= 1 or workers == 1:
        return [_execute(job, config, python, runs) for job in jobs]
    pool = ThreadPoolExecutor(min(workers, len(jobs)), thread_name_prefix="rlvr-sandbox")
    try:
        futures = [pool.submit(_execute, job, config, python, runs) for job in jobs]
        return [future.result() for future in futures]
    except BaseException:
        runs.stop_all()  # the threads see their pipes close at once and clean up their directories
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _Running:
    """The live sandboxes of one call, so that an interrupt can kill them all without waiting."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[bytes]] = set()
        self.stopped = False

    def add(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.add(proc)
            if self.stopped:
                _kill_group(proc)

    def discard(self, proc: subprocess.Popen[bytes]) -> None:
        """Forget ``proc`` before it is reaped (after that its group id may be reused)."""
        with self._lock:
            self._procs.discard(proc)

    def stop_all(self) -> None:
        with self._lock:
            self.stopped = True
            for proc in self._procs:
                _kill_group(proc)


_checked: set[tuple[str, SandboxConfig]] = set()
_cleaned: set[tuple[int, str]] = set()
_state_lock = threading.Lock()


def _self_check(config: SandboxConfig, python: str) -> None:
    """Run a trivial correct program under ``config`` once per process; SandboxError if it fails."""
    key = (python, config)
    with _state_lock:
        if key in _checked:
            return
    limit = max(config.timeout_s, SELF_CHECK_TIMEOUT_S)
    code, tests, entry = _SELF_CHECK
    result = _execute(SandboxJob(code, tests, entry), dataclasses.replace(config, timeout_s=limit), python)
    if result.status != "ok":
        output = f"; its output ends: {result.output[-500:]!r}" if result.output.strip() else ""
        raise SandboxError(
            f"the sandbox fails its self-check with {python} (a correct two-line program does not pass, "
            f"so every program would score 0): {result.status}: {result.detail}{output}"
        )
    with _state_lock:
        _checked.add(key)


def _clean_once() -> None:
    """Remove stale working directories in the temporary directory, once per process."""
    key = (os.getpid(), tempfile.gettempdir())
    with _state_lock:
        if key in _cleaned:
            return
        _cleaned.add(key)
    remove_stale_workdirs(key[1])


def remove_stale_workdirs(root: str | None = None) -> int:
    """Delete the sandbox working directories in ``root`` (default: the temporary directory) that no
    live process holds: those left by a caller killed with SIGKILL or SIGTERM. Returns how many.

    Each caller holds an exclusive ``flock`` on its working directory for the whole run; the kernel
    drops it when the caller dies, however it dies, so a directory that can be locked is stale.
    """
    root = root or tempfile.gettempdir()
    removed = 0
    try:
        names = [n for n in os.listdir(root) if n.startswith(WORKDIR_PREFIX)]
    except OSError:
        return 0
    for name in names:
        path = os.path.join(root, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:  # gone, not a directory, or another user's
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live caller holds it
            os.close(fd)
            continue
        try:
            _remove_tree(path)
            removed += not os.path.exists(path)
        finally:
            os.close(fd)
    return removed


def _make_workdir() -> tuple[str, int]:
    """A new working directory, locked by this process, and the descriptor that holds the lock.

    It is created under a name stale-directory removal ignores and renamed once locked, so that
    another process's clean-up can never take a directory that is being set up.
    """
    fresh = os.path.realpath(tempfile.mkdtemp(prefix="." + WORKDIR_PREFIX))
    fd = os.open(fresh, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path = os.path.join(os.path.dirname(fresh), os.path.basename(fresh)[1:])
        os.rename(fresh, path)
    except BaseException:
        os.close(fd)
        _remove_tree(fresh)
        raise
    return path, fd


def _check_job(job: object, index: int) -> None:
    if not isinstance(job, SandboxJob):
        raise ConfigError(f"jobs[{index}] must be a SandboxJob, got {type(job).__name__}")
    if not isinstance(job.code, str):
        raise ConfigError(f"jobs[{index}].code must be a string, got {type(job.code).__name__}")
    if isinstance(job.tests, str) or not all(isinstance(t, str) for t in job.tests):
        raise ConfigError(f"jobs[{index}].tests must be a sequence of strings")


def _environment(workdir: str) -> dict[str, str]:
    threads = {name: "1" for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LC_ALL": "C.UTF-8", **threads}


def _execute(
    job: SandboxJob, config: SandboxConfig, python: str, runs: _Running | None = None
) -> SandboxResult:
    start = time.monotonic()
    runs = runs or _Running()
    workdir: str | None = None
    lock_fd: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    try:
        if runs.stopped:  # the call was interrupted before this job started
            return SandboxResult("error", 0, len(job.tests), "", 0.0, detail="interrupted")
        workdir, lock_fd = _make_workdir()
        nonce = secrets.token_hex(16)
        payload_path = os.path.join(workdir, ".payload.json")
        _write_payload(payload_path, job, config, nonce)
        proc = subprocess.Popen(
            [python, "-I", "-B", "-S", str(CHILD_SCRIPT), payload_path],
            cwd=workdir,
            env=_environment(workdir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
        runs.add(proc)
        output, stopped = _collect(proc, start + config.timeout_s, config.max_output_bytes, runs)
        return _interpret(
            output, nonce, stopped, proc.returncode, job, config, time.monotonic() - start, proc.pid
        )
    except Exception as exc:  # a failure of the sandbox itself (no interpreter, no disk, ...)
        return SandboxResult(
            "error",
            0,
            len(job.tests),
            "",
            time.monotonic() - start,
            detail=f"sandbox failure: {type(exc).__name__}: {exc}",
        )
    finally:
        if proc is not None:
            runs.discard(proc)
            if proc.returncode is None:  # not reaped yet, so its group id is still its own
                _kill_group(proc)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:  # stuck in the kernel; Popen reaps it later
                    pass
            if proc.stdout is not None:
                proc.stdout.close()
        if workdir is not None:
            _remove_tree(workdir)
        if lock_fd is not None:
            os.close(lock_fd)


def _write_payload(path: str, job: SandboxJob, config: SandboxConfig, nonce: str) -> None:
    memory = config.memory_mb * (1 << 20)
    payload = {
        "code": job.code,
        "tests": list(job.tests),
        "entry_point": job.entry_point,
        "nonce": nonce,
        "parent_pid": os.getpid(),
        "namespaces": config.namespaces,
        "seccomp": config.seccomp,
        "strict_equality": config.strict_equality,
        "audit_hook": config.audit_hook,
        "site_packages": site.getsitepackages() if config.site_packages else [],
        "limits": {
            "cpu_s": config.cpu_s if config.cpu_s is not None else config.timeout_s,
            "memory_bytes": int(memory),
            "max_file_bytes": int(config.max_file_bytes),
            "max_open_files": int(config.max_open_files),
            "max_files": int(config.max_files),
        },
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        json.dump(payload, f)


def _collect(
    proc: subprocess.Popen[bytes], deadline: float, cap: int, runs: _Running
) -> tuple[bytes, str | None]:
    """Read the child's output until it exits, the deadline passes or the output exceeds ``cap``.

    Returns the output (at most ``cap`` bytes) and why the run was stopped ("timeout",
    "output_limit", "interrupted") or None. The process group is killed before the leader is
    reaped, so its group id cannot have been reused by then.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    size = 0
    stopped: str | None = None
    exited = False
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if runs.stopped:
                stopped = "interrupted"
                break
            if remaining <= 0:
                stopped = "timeout"
                break
            if not selector.select(min(remaining, 0.1)):
                if not exited and _has_exited(proc):
                    exited = True
                    _kill_group(proc)  # whatever else holds the pipe open
                continue
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            if not data:  # every writer closed: the process has exited, or closed its output
                break
            chunks.append(data)
            size += len(data)
            if size > cap:
                stopped = "output_limit"
                break
    pause = 0.0005
    while stopped is None and not _has_exited(proc):
        if time.monotonic() >= deadline:
            stopped = "timeout"
            break
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
    _kill_group(proc)
    runs.discard(proc)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # stuck in the kernel; reaped later
        pass
    return b"".join(chunks)[:cap], stopped


def _has_exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the child has exited, without reaping it where the platform allows (WNOWAIT)."""
    if not hasattr(os, "waitid"):  # macOS: poll() reaps, so the final group kill may come late
        return proc.poll() is not None
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's process group, unless the child was reaped (its id may be reused)."""
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _remove_tree(path: str) -> None:
    """Delete the working directory, even where the program removed its own permissions."""
    try:
        for root, dirs, _ in os.walk(path):
            for name in dirs:
                sub = os.path.join(root, name)
                if not os.path.islink(sub):
                    os.chmod(sub, 0o700)
    except OSError:
        pass
    shutil.rmtree(path, ignore_errors=True)


def _interpret(
    output: bytes,
    nonce: str,
    stopped: str | None,
    returncode: int | None,
    job: SandboxJob,
    config: SandboxConfig,
    duration: float,
    pid: int,
) -> SandboxResult:
    total = len(job.tests)
    marker = nonce.encode() + b" "
    program_lines: list[bytes] = []
    errors: list[str | None] = ["not run"] * total
    kinds: set[str] = set()
    blocked: list[str] = []
    layers: tuple[str, ...] = ()
    program_error = ""
    done = False
    for line in output.split(b"\n"):
        if not line.startswith(marker):
            program_lines.append(line)
            continue
        if program_lines and not program_lines[-1]:
            program_lines.pop()  # the newline the harness writes before each report line
        try:
            report = json.loads(line[len(marker) :])
        except ValueError:  # cut off by the output cap
            continue
        if "layers" in report:
            layers = tuple(report["layers"])
        elif "blocked" in report:
            blocked.append(report["blocked"])
            program_error = program_error or f"blocked: {report['blocked']} ({report.get('detail', '')})"
        elif "test" in report and 0 <= report["test"] < total:
            errors[report["test"]] = None if report["ok"] else report.get("error", "failed")
            kinds.add(report.get("kind") or "")
        elif "program_error" in report:
            program_error = program_error or report["program_error"]
            kinds.add(report.get("kind") or "")
        elif "done" in report:
            done = True
    passed = sum(e is None for e in errors)
    first_failure = next((e for e in errors if e is not None), "")
    cpu_signals = (-signal.SIGXCPU, -signal.SIGKILL)
    if stopped == "timeout" or (stopped is None and not done and returncode in cpu_signals):
        status, detail = "timeout", f"stopped after {config.timeout_s:g} s (wall clock or CPU time)"
    elif stopped == "output_limit":
        status, detail = "output_limit", f"output exceeded {config.max_output_bytes} bytes"
    elif stopped == "interrupted":
        status, detail = "error", "interrupted (the caller stopped every sandbox)"
    elif "memory" in kinds:
        status, detail = "memory", f"out of memory (limit {config.memory_mb} MiB)"
    elif "file_size" in kinds:
        status, detail = "output_limit", f"a file exceeded {config.max_file_bytes} bytes"
    elif blocked or program_error or not done:
        status = "error"
        detail = program_error or f"the process ended (exit code {returncode}) before all tests ran"
    else:
        status = "ok" if passed == total else "failed"
        detail = first_failure or ""
    text = b"\n".join(program_lines).decode("utf-8", errors="replace").strip("\n")
    tail = text[-config.output_tail_chars :] if config.output_tail_chars else ""
    return SandboxResult(
        status, passed, total, tail, duration, detail, tuple(blocked), layers, pid, tuple(errors)
    )


__all__ = [
    "CHILD_SCRIPT",
    "WORKDIR_PREFIX",
    "SandboxConfig",
    "SandboxError",
    "SandboxJob",
    "SandboxResult",
    "Status",
    "default_workers",
    "remove_stale_workdirs",
    "run_program",
    "run_programs",
]
