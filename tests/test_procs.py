"""Child processes never outlive the fedseg process that started them: real processes, really killed."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

CHILD = textwrap.dedent("""
    import subprocess, sys, time
    from fedseg.procs import exit_with_parent
    exit_with_parent(poll_s=0.2)
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    print(grandchild.pid, flush=True)
    time.sleep(600)
""")
PARENT = textwrap.dedent("""
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], start_new_session=True)
    print(child.pid, flush=True)
    time.sleep(600)
""")


def _gone_within(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not left:
            return []
        time.sleep(0.2)
    return left


def test_a_child_ends_itself_and_what_it_started_when_its_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD], stdout=subprocess.PIPE, text=True)
    started = [psutil.Process(parent.pid)]
    try:
        pids = [int(parent.stdout.readline()), int(parent.stdout.readline())]  # child, then grandchild
        started += [psutil.Process(p) for p in pids]
        assert _gone_within(pids, 1.0) == pids  # alive while the parent lives
        parent.send_signal(signal.SIGKILL)  # no cleanup can run in the parent
        parent.wait(timeout=10)
        assert _gone_within(pids, 15.0) == []
    finally:
        for proc in started:  # only what this test started (psutil refuses a reused pid)
            try:
                proc.kill()
            except psutil.Error:
                pass


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_fedseg_simulate_leaves_no_simulator_running(sig, tmp_path):
    """SIGTERM: the command's own cleanup stops what it started; SIGKILL: the simulator's child notices."""
    from fedseg.data.synth import synthesize
    from fedseg.procs import ProcessTree

    synthesize("spleen", tmp_path / "data", cases=6, seed=1, workers=1)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "fedseg.cli", "simulate", "--task", "spleen", "--sites", "2", "--cases", "6",
           "--data", str(tmp_path / "data"), "--rounds", "30", "--local-epochs", "1", "--run-dir", str(run),
           "--no-report"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    tree = ProcessTree(proc.pid, session=True)  # this test's own record, for cleaning up after a failure
    try:
        deadline = time.monotonic() + 300
        log = run / "simulator.log"
        while "Round 1 started" not in (log.read_text(errors="replace") if log.is_file() else ""):
            assert time.monotonic() < deadline and proc.poll() is None, "the job never reached round 1"
            tree.observe()
            time.sleep(0.5)
        tree.observe()
        ours = [p for p in tree.alive() if p.pid != proc.pid]
        assert ours, "no simulator process was seen"
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == (128 + sig if sig == signal.SIGTERM else -sig)
        assert _gone_within([p.pid for p in ours], 30.0) == []
    finally:
        tree.stop(grace=2.0)
