"""The sandbox with real subprocesses: correct and wrong programs, and programs that misbehave."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from rlvr.errors import ConfigError
from rlvr.rewards import _sandbox_child as child
from rlvr.rewards.sandbox import (
    WORKDIR_PREFIX,
    SandboxConfig,
    SandboxError,
    SandboxJob,
    remove_stale_workdirs,
    run_program,
    run_programs,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox's limits are tested on Linux")

TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]
FAST = SandboxConfig(timeout_s=10)
ADD = "def add(a, b):\n    return a + b\n"


def run(code: str, tests=TESTS, config: SandboxConfig = FAST, **kwargs):
    return run_program(textwrap.dedent(code), tests, config, **kwargs)


def live_group_members(pgid: int) -> list[int]:
    """Processes (not zombies) whose process group is ``pgid``, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def assert_group_gone(pgid: int) -> None:
    deadline = time.monotonic() + 2  # SIGKILL is delivered asynchronously
    while live_group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert live_group_members(pgid) == []


# --- programs that behave --------------------------------------------------------------------------


def test_correct_solution_passes():
    result = run(ADD)
    assert (result.status, result.passed, result.total) == ("ok", 2, 2)
    assert result.all_passed and result.test_errors == (None, None)
    assert {"resource_limits", "audit_hook"} <= set(result.layers)
    assert_group_gone(result.pid)


def test_wrong_solution_fails_with_the_failing_test_named():
    result = run("def add(a, b):\n    return a - b\n")  # add(1, 2) is -1 and add(-1, 1) is -2
    assert result.status == "failed"
    assert result.passed == 0 and result.total == 2
    assert "add(1, 2) == 3 (got -1)" in result.detail


def test_partly_right_solution_counts_the_passing_tests():
    result = run("def add(a, b):\n    return 3\n")  # add(1, 2) == 3 passes, add(-1, 1) == 0 fails
    assert (result.status, result.passed) == ("failed", 1)
    assert result.test_errors[0] is None and "got 3" in result.test_errors[1]


def test_program_output_is_kept_without_report_lines():
    result = run("print('hello')\ndef add(a, b):\n    print('called')\n    return a + b\n")
    assert result.status == "ok"
    assert result.output.split("\n") == ["hello", "called", "called"]


def test_syntax_error_and_missing_entry_point_are_errors():
    assert run("def add(a, b) return a").status == "error"
    result = run("def plus(a, b):\n    return a + b\n", entry_point="add")
    assert result.status == "error" and "does not define a function 'add'" in result.detail


def test_threads_temp_files_and_standard_library_work():
    result = run(
        """
        import collections, enum, logging, os, tempfile, threading, typing
        Point = collections.namedtuple("Point", "x y")  # uses sys._getframe, refused quietly
        Color = enum.Enum("Color", "RED GREEN")
        T = typing.TypeVar("T")
        logging.getLogger("x").warning("logged")
        out = []
        t = threading.Thread(target=lambda: out.append(1))
        t.start(); t.join()
        with open("notes.txt", "w") as f:
            f.write("kept in the working directory")
        with tempfile.TemporaryDirectory() as d:
            open(os.path.join(d, "x"), "w").close()
        def add(a, b):
            return a + b + out[0] - 1
        """
    )
    assert result.status == "ok", result.detail


# --- time, memory, output ----------------------------------------------------------------------------


def test_infinite_loop_is_stopped_within_the_time_limit():
    start = time.monotonic()
    result = run(ADD + "while True:\n    pass\n", config=SandboxConfig(timeout_s=1.0))
    elapsed = time.monotonic() - start
    assert result.status == "timeout" and result.passed == 0
    assert 1.0 <= elapsed < 4.0
    assert_group_gone(result.pid)


def test_cpu_time_limit_stops_a_busy_program_before_the_wall_clock():
    result = run(ADD + "while True:\n    pass\n", config=SandboxConfig(timeout_s=20, cpu_s=1))
    assert result.status == "timeout"
    assert result.duration_s < 10  # SIGXCPU after 1 s of CPU (a loaded machine stretches wall time)


def test_allocating_10_gb_is_stopped():
    result = run("x = bytearray(10 * 2**30)\n" + ADD)
    assert (result.status, result.passed) == ("memory", 0)


def test_growing_memory_is_stopped_at_the_limit():
    result = run(
        "xs = []\nwhile True:\n    xs.append(bytearray(2**20))\n", config=SandboxConfig(memory_mb=200)
    )
    assert (result.status, result.passed) == ("memory", 0)


def test_printing_forever_is_cut_off():
    config = SandboxConfig(max_output_bytes=1 << 16, output_tail_chars=100)
    result = run("while True:\n    print('spam' * 100)\n", config=config)
    assert result.status == "output_limit" and result.passed == 0
    assert len(result.output) <= 100 and "spam" in result.output
    assert_group_gone(result.pid)


def test_writing_a_huge_file_is_stopped():
    code = "with open('big.bin', 'wb') as f:\n    while True:\n        f.write(b'x' * 2**16)\n" + ADD
    result = run(code, config=SandboxConfig(max_file_bytes=1 << 20))
    assert (result.status, result.passed) == ("output_limit", 0)
    assert "exceeded 1048576 bytes" in result.detail


# --- processes ---------------------------------------------------------------------------------------

FORKS = {
    "os.fork": "os.fork()",
    "subprocess": "import subprocess\nsubprocess.run(['sleep', '60'])",
    "multiprocessing": "import multiprocessing\nmultiprocessing.Process(target=time.sleep, args=(60,)).start()",
    "os.system": "os.system('sleep 60')",
    "os.posix_spawn": "os.posix_spawn('/bin/sleep', ['sleep', '60'], {})",
}


@pytest.mark.parametrize("how", sorted(FORKS))
def test_creating_processes_is_blocked_and_nothing_survives(how):
    code = f"import os, sys, time\nprint(os.getpid(), flush=True)\n{FORKS[how]}\ntime.sleep(60)\n{ADD}"
    result = run(code)
    assert result.status == "error" and result.passed == 0
    assert int(result.output.split()[0]) == result.pid
    assert_group_gone(result.pid)


def test_seccomp_alone_refuses_fork_and_exec():
    code = """
    import os
    for name, call in [("fork", os.fork), ("exec", lambda: os.execv("/bin/true", ["true"]))]:
        try:
            call()
            print(name, "allowed")
        except OSError as e:
            print(name, "refused", e.errno)
    """
    result = run(textwrap.dedent(code) + ADD, config=SandboxConfig(audit_hook=False))
    if "seccomp" not in result.layers:
        pytest.skip("seccomp is not available here")
    assert result.output.split("\n") == ["fork refused 1", "exec refused 1"]


def test_a_forked_process_is_killed_with_the_group_when_fork_is_possible():
    """With both process layers off a forked child can exist; the group kill still ends it."""
    code = """
    import os, time
    try:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        print("forked")
    except OSError:
        print("refused")  # RLIMIT_NPROC=0 (not root)
    """
    result = run(textwrap.dedent(code) + ADD, config=SandboxConfig(audit_hook=False, seccomp=False))
    assert result.status == "ok" and result.output in ("forked", "refused")
    assert_group_gone(result.pid)


def test_signals_to_the_caller_are_refused():
    code = "import os\nos.kill(os.getppid(), 0)\n" + ADD  # signal 0: harmless even if it got through
    result = run(code)
    assert result.status == "error" and result.blocked == ("os.kill",)
    kernel_only = run(
        "import os\ntry:\n    os.kill(os.getppid(), 0)\n    print('allowed')\nexcept OSError:\n    print('refused')\n"
        + ADD,
        config=SandboxConfig(audit_hook=False),
    )
    if "seccomp" in kernel_only.layers:
        assert kernel_only.output == "refused"


# --- network -----------------------------------------------------------------------------------------


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def assert_no_connection(server: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        server.accept()


def test_connecting_to_localhost_is_blocked(listener):
    port = listener.getsockname()[1]
    result = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n" + ADD)
    assert result.status == "error" and result.passed == 0
    assert any(event.startswith("socket.") for event in result.blocked)
    assert_no_connection(listener)


def test_binding_a_socket_is_blocked_even_when_the_error_is_caught():
    code = (
        "import socket\ntry:\n    socket.socket().bind(('127.0.0.1', 0))\nexcept OSError:\n    pass\n" + ADD
    )
    result = run(code)
    assert result.status == "error" and result.passed == 2  # the tests ran; the attempt still counts
    assert "socket.__new__" in result.blocked


def test_kernel_layers_alone_keep_the_network_out(listener):
    port = listener.getsockname()[1]
    code = f"""
    import socket
    try:
        socket.create_connection(("127.0.0.1", {port}), timeout=2)
        print("connected")
    except OSError as e:
        print("refused", e.errno)
    """
    result = run(textwrap.dedent(code) + ADD, config=SandboxConfig(audit_hook=False))
    if not {"seccomp", "network_namespace"} & set(result.layers):
        pytest.skip("neither seccomp nor network namespaces are available here")
    assert result.output.startswith("refused")
    assert_no_connection(listener)


# --- files ---------------------------------------------------------------------------------------------


def test_files_outside_the_working_directory(tmp_path):
    """Writing outside: refused by the audit hook and, where available, by the read-only mount.

    Reading outside: refused by the audit hook only; without it the kernel lets the program read
    what the process's user may read (documented in the sandbox's module docstring).
    """
    target = tmp_path / "precious.txt"
    target.write_text("original")
    write = f"open({str(target)!r}, 'w').write('changed')\n" + ADD
    result = run(write)
    assert result.status == "error" and result.blocked == ("open",)
    read = run(f"print(open({str(target)!r}).read())\n" + ADD)
    assert read.status == "error" and "original" not in read.output
    remove = run(f"import os\nos.remove({str(target)!r})\n" + ADD)
    assert remove.status == "error" and remove.blocked == ("os.remove",)

    kernel_only = run(
        f"try:\n    open({str(target)!r}, 'w')\nexcept OSError as e:\n    print('refused', e.errno)\n"
        f"print(open({str(target)!r}).read())\n" + ADD,
        config=SandboxConfig(audit_hook=False),
    )
    if "read_only_filesystem" in kernel_only.layers:
        assert kernel_only.output.split("\n") == ["refused 30", "original"]  # EROFS; reading works
    assert target.read_text() == "original"


def test_symlink_out_of_the_working_directory_does_not_help(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("original")
    code = f"import os\nos.symlink({str(target)!r}, 'link')\nopen('link', 'w').write('changed')\n" + ADD
    result = run(code)
    assert result.status == "error" and "open" in result.blocked
    assert target.read_text() == "original"


# --- reward hacks ----------------------------------------------------------------------------------------


def test_sys_exit_before_the_tests_does_not_pass():
    result = run(ADD + "import sys\nsys.exit(0)\n")
    assert (result.status, result.passed) == ("error", 0)


def test_os_exit_before_the_report_does_not_pass():
    result = run(ADD + "import os\nos._exit(0)\n")
    assert (result.status, result.passed) == ("error", 0)
    in_test = run("import os\ndef add(a, b):\n    os._exit(0)\n")
    assert (in_test.status, in_test.passed) == ("error", 0)


def test_sys_exit_inside_a_test_fails_that_test():
    result = run("import sys\ndef add(a, b):\n    sys.exit(0)\n")
    assert (result.status, result.passed) == ("failed", 0)
    assert result.test_errors == ("SystemExit: 0", "SystemExit: 0")


def test_printed_fake_reports_are_ignored():
    code = 'print("all tests passed")\nprint(\'{"done": 2}\')\nprint(\'x {"test": 0, "ok": true}\')\n'
    result = run(code + "def add(a, b):\n    return 5\n")
    assert (result.status, result.passed) == ("failed", 0)


def test_always_equal_objects_do_not_pass():
    code = "class Anything:\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Anything()\n"
    assert run(code).passed == 0
    nested = run(
        "class A:\n    __eq__ = lambda s, o: True\ndef add(a, b):\n    return [A()]\n",
        ["assert add(1, 2) == [3]"],
    )
    assert nested.passed == 0
    lenient = run(code, config=SandboxConfig(strict_equality=False))
    assert lenient.passed == 2  # the hack works without strict equality: what the option protects against


def test_redefined_builtins_do_not_change_the_tests():
    code = "def sorted(xs):\n    return [1, 2, 3]\ndef rev(xs):\n    return xs\n"
    result = run(code, ["assert sorted(rev([3, 1, 2])) == [1, 2, 3]", "assert rev([3, 1, 2]) == [2, 1, 3]"])
    assert result.test_errors[0] is None  # the built-in sorted: [1, 2, 3]
    assert result.passed == 1
    patched = run(
        "import builtins\nbuiltins.len = lambda x: 0\ndef f(xs):\n    return xs\n",
        ["assert len(f([1])) == 1"],
    )
    assert patched.status == "ok"


def test_the_harness_frames_and_heap_are_out_of_reach():
    code = """
    import gc, sys
    def traceback_frame():
        try:
            1 / 0
        except ZeroDivisionError as e:
            return e.__traceback__.tb_frame
    def add(a, b):
        found = []
        for probe in (lambda: sys._getframe(1).f_locals, gc.get_objects, traceback_frame):
            try:
                found.append(probe())
            except Exception as e:
                print(type(e).__name__)
        return a + b
    """
    result = run(code, ["assert add(1, 2) == 3"])
    assert result.output.split("\n") == ["SandboxHidden"] * 3
    assert result.status == "ok"


def test_ctypes_cannot_be_imported():
    result = run("import ctypes\n" + ADD)
    assert result.status == "error" and "ctypes" in result.detail


# --- the caller ------------------------------------------------------------------------------------------


def test_the_caller_is_unharmed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the sandboxes' working directories go here
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
    signal.setitimer(signal.ITIMER_REAL, 60)
    cwd, env = os.getcwd(), dict(os.environ)
    try:
        jobs = [
            SandboxJob("import os\nos.chdir('/')\nos.environ['PATH'] = ''\n" + ADD, tuple(TESTS)),
            SandboxJob("import signal\nsignal.alarm(30)\n" + ADD, tuple(TESTS)),
            SandboxJob("import os\nos.kill(os.getppid(), 9)\n" + ADD, tuple(TESTS)),
            SandboxJob("import os, signal\nos.killpg(0, 9)\n" + ADD, tuple(TESTS)),
            SandboxJob("import os\nos.chmod('.', 0)\n" + ADD, tuple(TESTS)),
        ]
        results = run_programs(jobs, SandboxConfig(timeout_s=10), max_workers=3)
        remaining = signal.getitimer(signal.ITIMER_REAL)[0]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert [r.status for r in results] == ["ok", "ok", "error", "error", "ok"]
    assert 0 < remaining <= 60 and not fired
    assert os.getcwd() == cwd and dict(os.environ) == env
    assert list(tmp_path.iterdir()) == []  # every working directory was removed


def test_the_sandbox_dies_with_its_caller(tmp_path):
    caller = textwrap.dedent(
        f"""
        import tempfile
        tempfile.tempdir = {str(tmp_path)!r}
        from rlvr.rewards.sandbox import SandboxConfig, run_program
        code = "import os, time\\nopen('pid', 'w').write(str(os.getpid()))\\nwhile True:\\n    time.sleep(1)\\n"
        run_program(code, ["pass"], SandboxConfig(timeout_s=60))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", caller])
    try:
        deadline = time.monotonic() + 20
        pid_files = []
        while not pid_files and time.monotonic() < deadline:
            pid_files = [p for p in tmp_path.glob("*/pid") if p.read_text()]
            time.sleep(0.05)
        assert pid_files, "the sandbox did not start"
        sandbox_pid = int(pid_files[0].read_text())
        assert live_group_members(sandbox_pid) == [sandbox_pid]
    finally:
        proc.kill()
        proc.wait()
    assert_group_gone(sandbox_pid)


# --- running many, configuration ----------------------------------------------------------------------------


def test_many_programs_run_in_parallel_and_come_back_in_order():
    # Each loop prints when it started; run one after another, each would start only after the
    # previous one's 1 s limit. Proved by the order of events, not by a duration.
    loop = SandboxJob(
        "import time\nprint(time.monotonic(), flush=True)\n" + ADD + "while True:\n    pass\n", tuple(TESTS)
    )
    good, bad = SandboxJob(ADD, tuple(TESTS)), SandboxJob("def add(a, b):\n    return 0\n", tuple(TESTS))
    results = run_programs([loop, good, loop, bad, loop], SandboxConfig(timeout_s=1.0), max_workers=5)
    assert [r.status for r in results] == ["timeout", "ok", "timeout", "failed", "timeout"]
    started = sorted(float(results[i].output) for i in (0, 2, 4))
    assert started[-1] < started[0] + 1.0  # the last loop started before the first was stopped


def test_a_program_that_times_out_is_run_again_with_the_longer_limit():
    # 1.5 s of work under a 0.5 s limit (what load does to a correct program) passes on its second
    # run with 15 s; a program that never ends times out twice; the others run once.
    slow = SandboxJob("import time\ntime.sleep(1.5)\n" + ADD, tuple(TESTS))
    hung = SandboxJob(ADD + "import time\nwhile True:\n    time.sleep(1)\n", tuple(TESTS))
    good = SandboxJob(ADD, tuple(TESTS))
    config = SandboxConfig(timeout_s=0.5)
    results = run_programs([slow, hung, good], config, max_workers=3, retry_timeout_s=3.0)
    assert [(r.status, r.attempts) for r in results] == [("ok", 2), ("timeout", 2), ("ok", 1)]
    assert "3 s" in results[1].detail
    once = run_programs([slow], config, max_workers=1)  # without a retry limit: one run
    assert [(r.status, r.attempts) for r in once] == [("timeout", 1)]
    with pytest.raises(ConfigError, match="retry_timeout_s"):
        run_programs([good], config, retry_timeout_s=0.1)


def broken_interpreter(tmp_path: Path, kind: str) -> tuple[str, str]:
    """An interpreter the sandbox cannot run programs with, and what the error must say."""
    if kind == "missing":
        return "/nonexistent/python3", "No such file or directory: '/nonexistent/python3'"
    script = tmp_path / "python3"
    if kind == "not_executable":
        script.write_text("#!/bin/sh\n")
        script.chmod(0o644)
        return str(script), "Permission denied"
    # Starts, then dies before running anything, as where the kernel refuses the namespaces.
    script.write_text("#!/bin/sh\necho 'unshare: Operation not permitted' >&2\nexit 1\n")
    script.chmod(0o755)
    return str(script), "unshare: Operation not permitted"


@pytest.mark.parametrize("kind", ["missing", "not_executable", "dies_at_start"])
def test_a_sandbox_that_cannot_start_is_an_error_naming_the_cause(tmp_path, kind):
    python, cause = broken_interpreter(tmp_path, kind)
    with pytest.raises(SandboxError, match="self-check") as error:
        run(ADD, config=SandboxConfig(python=python))
    assert cause in str(error.value)
    with pytest.raises(SandboxError, match="self-check"):  # every call, not only the first
        run_programs([SandboxJob(ADD, tuple(TESTS))] * 2, SandboxConfig(python=python), max_workers=2)
    assert run(ADD).status == "ok"  # a working configuration is unaffected


def sandbox_caller(tmp_path: Path, jobs: int) -> subprocess.Popen[bytes]:
    """A Python process running ``jobs`` sandboxes at once, each sleeping for ten minutes (each
    writes its pid to a ``pid`` file in its working directory), with working directories in ``tmp_path``."""
    caller = textwrap.dedent(
        f"""
        import tempfile
        tempfile.tempdir = {str(tmp_path)!r}
        from rlvr.rewards.sandbox import SandboxConfig, SandboxJob, run_programs
        code = "import os, time\\nopen('pid', 'w').write(str(os.getpid()))\\ntime.sleep(600)\\n"
        jobs = [SandboxJob(code, ("pass",))] * {jobs}
        run_programs(jobs, SandboxConfig(timeout_s=600), max_workers=len(jobs))
        """
    )
    return subprocess.Popen([sys.executable, "-c", caller], stderr=subprocess.DEVNULL)


def wait_for_sandboxes(tmp_path: Path, count: int) -> list[int]:
    deadline = time.monotonic() + 60
    pid_files: list[Path] = []
    while len(pid_files) < count and time.monotonic() < deadline:
        pid_files = [p for p in tmp_path.glob(WORKDIR_PREFIX + "*/pid") if p.read_text()]
        time.sleep(0.05)
    assert len(pid_files) == count, "the sandboxes did not start"
    return [int(p.read_text()) for p in pid_files]


def workdirs(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.iterdir() if WORKDIR_PREFIX in p.name]


def test_ctrl_c_stops_every_sandbox_at_once(tmp_path):
    proc = sandbox_caller(tmp_path, jobs=3)
    try:
        pids = wait_for_sandboxes(tmp_path, 3)
        proc.send_signal(signal.SIGINT)
        # The sandboxes' limit is 600 s; the caller exits as soon as they are killed.
        assert proc.wait(timeout=120) != 0
    finally:
        proc.kill()
        proc.wait()
    for pid in pids:
        assert_group_gone(pid)
    assert workdirs(tmp_path) == []  # each working directory was removed on the way out


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_directories_of_a_killed_caller_are_removed_at_the_next_start(tmp_path, monkeypatch, how):
    proc = sandbox_caller(tmp_path, jobs=2)
    try:
        pids = wait_for_sandboxes(tmp_path, 2)
        assert remove_stale_workdirs(str(tmp_path)) == 0  # a live caller's directories are kept
        assert len(workdirs(tmp_path)) == 2
        proc.send_signal(how)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    for pid in pids:
        assert_group_gone(pid)
    assert len(workdirs(tmp_path)) == 2  # left behind: no Python code ran on the way out
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert run(ADD).status == "ok"  # the next start
    assert workdirs(tmp_path) == []


@pytest.mark.parametrize(
    "kwargs",
    [{"timeout_s": 0}, {"memory_mb": -1}, {"cpu_s": 0}, {"max_open_files": 3}, {"max_output_bytes": True}],
)
def test_bad_config_is_refused(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        SandboxConfig(**kwargs)


def test_bad_jobs_are_refused():
    with pytest.raises(ConfigError, match="tests"):
        run_programs([SandboxJob(ADD, "assert add(1, 2) == 3")])  # a string, not a list of tests
    with pytest.raises(ConfigError, match="max_workers"):
        run_programs([SandboxJob(ADD, ())], max_workers=0)


# --- pieces of the harness, in process ---------------------------------------------------------------------


def test_plain_equal():
    class Anything:
        def __eq__(self, other):
            return True

        def __hash__(self):
            return 1

    assert child.plain_equal(4, 4.0) and child.plain_equal(True, 1)  # numbers compare by value, as ==
    assert child.plain_equal({"a": [1, (2, 3)]}, {"a": [1, (2, 3)]})
    from collections import Counter, defaultdict

    assert child.plain_equal(defaultdict(int, a=1), {"a": 1}) and child.plain_equal(
        Counter("aab"), {"a": 2, "b": 1}
    )
    assert not child.plain_equal([1, 2], (1, 2))  # as ==: a list is not a tuple
    assert not child.plain_equal(Anything(), 3) and not child.plain_equal([Anything()], [3])
    assert not child.plain_equal({"a": Anything()}, {"a": 1})
    assert not child.plain_equal({Anything(): 1}, {1: 1})
    assert not child.plain_equal({1, 2}, {1, 3}) and child.plain_equal({1, 2}, frozenset({2, 1}))


def test_seccomp_program_jumps_stay_inside_the_program():
    for arch in ("x86_64", "aarch64"):
        program = child._seccomp_program(arch, pid=1234)
        assert len(program) < 256
        for i, (code, jt, jf, _) in enumerate(program):
            if code & 0x07 == 0x05:  # a jump: both targets inside the program, forward
                assert 0 <= jt and 0 <= jf and i + 1 + max(jt, jf) < len(program)
        assert program[-1][0] == 0x06  # ends with a return
