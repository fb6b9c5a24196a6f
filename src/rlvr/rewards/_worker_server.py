"""A small fork server that starts grading workers for :class:`rlvr.rewards.grading_pool.GradingPool`.

The server is a fresh Python interpreter (started with ``subprocess``, so it is safe to start
after torch has created threads). It imports the worker's modules once (for math: math-verify,
warmed up), then forks a worker on each request and hands the caller one end of a socket pair
connected to it. Replacing a killed worker then takes milliseconds, and workers never re-run the
caller's ``__main__`` module (which ``multiprocessing``'s spawn and forkserver methods do, importing
torch and the whole training script into every worker).

The server ignores SIGCHLD, so the kernel reaps its children: a killed worker leaves no zombie.
It exits when the caller closes its socket (or dies); idle workers exit when their pipe closes,
and on Linux a busy worker is killed when the server exits.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
from multiprocessing.connection import Connection

_BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from rlvr.rewards._worker_server import serve; serve(int(sys.argv[2]), json.loads(sys.argv[3]))"
)
_PID = struct.Struct("q")


def _die_with(parent_pid: int) -> None:
    """On Linux, have the kernel kill this worker when the server exits (the server exits when the
    caller dies), so that a worker stuck in C code does not outlive an interrupted run."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the server exited before prctl took effect
        os._exit(0)


def serve(fd: int, config: dict) -> None:
    """Body of the server process: preload, then fork one worker per request byte received."""
    from rlvr.rewards.grading_pool import _worker_main

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    requests = socket.socket(fileno=fd)
    for module in config["preload"]:
        importlib.import_module(module)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps exited workers
    while True:
        try:
            if not requests.recv(1):
                return
        except OSError:
            return
        ours, theirs = socket.socketpair()
        server_pid = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                requests.close()
                ours.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _die_with(server_pid)
                _worker_main(
                    Connection(theirs.detach()),
                    config["fn"],
                    config["initializer"],
                    config["memory_limit_mb"],
                )
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        theirs.close()
        try:
            socket.send_fds(requests, [_PID.pack(pid)], [ours.fileno()])
        except OSError:
            return
        finally:
            ours.close()


class WorkerServer:
    """The caller's handle on a fork server: :meth:`fork` returns a new worker's pid and pipe."""

    def __init__(
        self,
        fn: str,
        initializer: str | None,
        memory_limit_mb: int | None,
        preload: list[str],
        timeout_s: float,
    ) -> None:
        ours, theirs = socket.socketpair()
        config = {
            "fn": fn,
            "initializer": initializer,
            "memory_limit_mb": memory_limit_mb,
            "preload": preload,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-c", _BOOT, json.dumps(sys.path), str(theirs.fileno()), json.dumps(config)],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        ours.settimeout(timeout_s)
        self._socket = ours

    def fork(self) -> tuple[int, Connection]:
        """Start a worker; RuntimeError if the server is gone (its error is on stderr)."""
        try:
            self._socket.sendall(b"w")
            message, fds, _, _ = socket.recv_fds(self._socket, _PID.size, 1)
        except OSError as e:
            message, fds, problem = b"", [], str(e)
        else:
            problem = "no worker"
        if len(message) == _PID.size and len(fds) == 1:
            return _PID.unpack(message)[0], Connection(fds[0])
        try:
            code = self.process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the grading worker server does not answer ({problem})") from None
        raise RuntimeError(f"the grading worker server exited (code {code}); its error is printed above")

    def close(self) -> None:
        """Stop the server (its running workers are stopped by the pool) and reap it."""
        self._socket.close()
        try:
            self.process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
