"""Child processes with bounded waits, stopped by what this run recorded and nothing else.

Every process fedseg starts for a local run (the NVFlare simulator, a POC system) gets a session
of its own, and every descendant seen while it runs is recorded (NVFlare starts its workers and
job processes in sessions of their own, and they outlive a killed parent as orphans). Only those
recorded processes are ever stopped, so a run can never stop another run's processes: nothing is
found by matching command lines or names.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass
class Finished:
    """How a bounded child process ended."""

    returncode: int | None  # None: it was stopped by fedseg, see ``stopped_because``
    seconds: float
    stopped_because: str | None = None


class ProcessTree:
    """Every process descended from ``root`` that was seen by :meth:`observe`, to stop them all later.

    With ``session``, ``root`` started a session of its own (``start_new_session=True``) and may
    exit while what it launched lives on, re-parented: then every process of that session, and its
    descendants, belong to the tree.
    """

    def __init__(self, root: int, *, session: bool = False):
        import psutil

        self._psutil = psutil
        self.root, self.session = root, session
        self.seen: dict[int, "psutil.Process"] = {}
        self.observe()

    def _roots(self) -> list:
        if not self.session:
            return [self._psutil.Process(self.root)]
        roots = []
        for proc in self._psutil.process_iter():
            try:
                if os.getsid(proc.pid) == self.root:
                    roots.append(proc)
            except OSError:
                continue
        return roots

    def observe(self) -> None:
        try:
            roots = self._roots()
        except self._psutil.Error:
            return
        for root in roots:
            try:
                for proc in [root, *root.children(recursive=True)]:
                    self.seen.setdefault(proc.pid, proc)
            except self._psutil.Error:
                continue

    def alive(self) -> list:
        # psutil compares each process's start time, so a reused pid is never mistaken for ours.
        return [p for p in self.seen.values() if p.is_running() and p.status() != self._psutil.STATUS_ZOMBIE]

    def stop(self, grace: float = 10.0, *, keep_root: bool = False) -> None:
        """SIGTERM every recorded process still running, then SIGKILL those left after ``grace`` seconds."""
        self.observe()
        procs = [p for p in self.alive() if not (keep_root and p.pid == self.root)]
        for proc in procs:
            try:
                proc.terminate()
            except self._psutil.Error:
                pass
        _, left = self._psutil.wait_procs(procs, timeout=grace)
        for proc in left:
            try:
                proc.kill()
            except self._psutil.Error:
                pass
        self._psutil.wait_procs(left, timeout=5)


def exit_with_parent(poll_s: float = 1.0) -> threading.Thread:
    """End this process, and every descendant it started, once the process that started it is gone.

    A parent killed with SIGKILL (or SIGTERM without a handler) runs no cleanup, and a bounded child
    (the simulator's) would train on as an orphan for hours: so the child watches, from a daemon
    thread, for being re-parented. Returns the thread.
    """
    parent, me = os.getppid(), os.getpid()
    tree = ProcessTree(me)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            tree.observe()
            if os.getppid() != parent:
                tree.stop(grace=5.0, keep_root=True)
                os._exit(1)

    thread = threading.Thread(target=watch, daemon=True, name="fedseg-exit-with-parent")
    thread.start()
    return thread


def stop_group(pgid: int, grace: float = 10.0) -> None:
    """SIGTERM the process group this run started, then SIGKILL whatever is left after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def run_bounded(cmd: list[str], *, env: dict[str, str], log_path: Path, idle_timeout: float, total_timeout: float,
                show: Callable[[str], bool] = lambda line: False, on_start: Callable[[int], None] | None = None,
                cwd: Path | None = None, done_line: str | None = None, exit_grace: float = 60.0,
                stop: threading.Event | None = None) -> Finished:
    """Run ``cmd`` in its own session, copying its output to ``log_path`` (and the lines ``show`` picks to stdout).

    The run is stopped (and ``stopped_because`` says why) when it prints nothing for ``idle_timeout``
    seconds, runs longer than ``total_timeout``, or has not exited ``exit_grace`` seconds after
    printing a line containing ``done_line`` (its work is over; a hung worker must not hold the run),
    or when another thread sets ``stop`` (a Tune trial that was ended early). Whatever the outcome,
    every process left in its tree is stopped before returning: a child that outlives the command
    never outlives the run.
    """
    start = time.monotonic()
    lines: queue.Queue = queue.Queue()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                start_new_session=True, cwd=cwd)
        if on_start is not None:
            on_start(proc.pid)
        tree = ProcessTree(proc.pid)
        reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True)
        reader.start()
        stopped, last_output = None, time.monotonic()
        last_observed, done_at = last_output, None
        try:
            while True:
                try:
                    line = lines.get(timeout=1.0)
                except queue.Empty:
                    line = ""
                if line is None:
                    break
                now = time.monotonic()
                if now - last_observed >= 1.0:
                    tree.observe()
                    last_observed = now
                if line:
                    last_output = now
                    if done_line and done_at is None and done_line in line:
                        done_at = now
                    log.write(line)
                    log.flush()
                    if show(line):
                        print(line.rstrip(), flush=True)
                if stop is not None and stop.is_set():
                    stopped = "stopped on request"
                elif done_at is not None and now - done_at > exit_grace:
                    stopped = f"did not exit within {exit_grace:.0f} s after its work ended"
                elif now - last_output > idle_timeout:
                    stopped = f"no output for {idle_timeout:.0f} s"
                elif now - start > total_timeout:
                    stopped = f"still running after {total_timeout:.0f} s"
                if stopped:
                    break
        finally:
            tree.stop()  # also after a normal exit: no orphaned worker survives the run
        code = proc.wait()
    return Finished(None if stopped else code, time.monotonic() - start, stopped)
