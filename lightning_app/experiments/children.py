"""The grid's ``lightning fit`` processes, tied to the process that started them: each runs in its
own process group (so it can be stopped with everything it started), is killed by the kernel if
its parent dies (Linux ``PR_SET_PDEATHSIG``, so a SIGKILLed runner leaves no orphan), and is
stopped with its group when the runner gets SIGTERM or SIGINT."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

_LIVE: set[subprocess.Popen] = set()
_LOCK = threading.RLock()
_STOPPING = threading.Event()
PR_SET_PDEATHSIG = 1
GRACE_S = 10.0  # after SIGTERM, a child has this long to exit before SIGKILL


class Stopped(RuntimeError):
    """The runner is stopping: no new child is started."""


def _die_with(parent: int):
    """The child's pre-exec step: SIGKILL when the parent exits (and exit now if it already has)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
    return preexec


def start(command: list[str], env: dict, **kwargs) -> subprocess.Popen:
    """Start ``command`` in a session of its own, killed when this process dies (``kwargs``: Popen's)."""
    return subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=_die_with(os.getpid()), **kwargs)


def call(command: list[str], env: dict, **kwargs) -> int:
    """Run ``command`` as a tied child (see the module) and return its exit status."""
    with _LOCK:
        if _STOPPING.is_set():
            raise Stopped("stopping")
        child = start(command, env=env, **kwargs)
        _LIVE.add(child)
    try:
        return child.wait()
    finally:
        with _LOCK:
            _LIVE.discard(child)


def signal_children(signum: int) -> None:
    """Send ``signum`` to every live child's process group."""
    with _LOCK:
        for child in list(_LIVE):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signum)


def _stop_all() -> None:
    _STOPPING.set()
    signal_children(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline:
        with _LOCK:
            if all(child.poll() is not None for child in _LIVE):
                return
        time.sleep(0.1)
    signal_children(signal.SIGKILL)


@contextlib.contextmanager
def stopped_with_runner(forward: tuple[int, ...] = ()):
    """While inside: SIGTERM or SIGINT stops every child (SIGTERM, then SIGKILL after ``GRACE_S``)
    and exits (SIGINT raises KeyboardInterrupt, SIGTERM exits with 143); the signals in ``forward``
    are passed on to the children (SLURM's requeue signal). Leaving by an exception stops them too."""
    def stop(signum: int, frame) -> None:
        _stop_all()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def pass_on(signum: int, frame) -> None:
        signal_children(signum)

    handled = {signal.SIGTERM: stop, signal.SIGINT: stop, **{signum: pass_on for signum in forward}}
    main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = {signum: signal.signal(signum, handler) for signum, handler in handled.items()} if main_thread else {}
    _STOPPING.clear()
    try:
        yield
    except BaseException:
        _stop_all()
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
