"""Chaos: real faults in real federated runs, and how the federation copes.

Each scenario runs ``fedseg simulate`` (the demo's own entry point) as a child process on the tiny
spleen job and, when a trigger line appears in the simulator log, hurts one site's client
process: SIGKILL (during local training, during the upload of its update, during cross-site
evaluation), SIGSTOP for longer than the straggler grace then SIGCONT, or its network
connections aborted (``ss -K``) for a while. The victim is found among this run's own
descendants by its client name and this run's unique workspace path, never by a name pattern
over the whole machine.

Reported per scenario: seconds from the fault to the server naming the site (detection), rounds
the site missed, whether final and best models and the cross-site matrix were written, how
training ended, and final Dice against an unfaulted run of the same job.

Usage::

    python bench/chaos.py [--out runs/chaos.json] [--work DIR] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


@dataclass(frozen=True)
class Fault:
    """What to do to which site, and when (the first simulator-log line matching ``trigger``)."""

    name: str
    action: str  # none | kill | stop | cut | remove_data
    trigger: str = ""
    site: str = "site-2"
    hold_s: float = 0.0  # stop / cut: how long
    min_clients: int = 1
    rounds: int = 12  # as few as the scenario needs to show its end state
    description: str = ""


FAULTS = {f.name: f for f in (
    Fault("none", "none", description="no fault (the reference run)"),
    Fault("kill_training_min2", "kill", r"fedseg site-2 round 2: training", min_clients=2, rounds=4,
          description="SIGKILL site-2 during local training; the job's minimum is 2 sites (the demo's default)"),
    Fault("kill_training", "kill", r"fedseg site-2 round 2: training",
          description="SIGKILL site-2 during local training, minimum 1 site"),
    Fault("kill_upload", "kill", r"fedseg site-2 round 2: global model val_dice", rounds=5,
          description="SIGKILL site-2 as it sends its round-2 update, minimum 1 site"),
    Fault("kill_cross_site", "kill", r"Beginning model validation", rounds=3,
          description="SIGKILL site-2 during cross-site evaluation, minimum 1 site"),
    # Holds just beyond the heartbeat timeout (12 s) and grace (8 s). Rounds without site-2 take
    # 2-3 s, and a cut-off site reconnects only on NVFlare's next retry (its backoff doubles up to
    # 10 s), then beats (every 5 s): a cut site was measured back 13 s after a 16 s cut, in round
    # 10, and under CI load it came back in round 10 of 12 and missed both. 24 rounds leave it
    # 14 rounds (about 40 s) to come back in.
    Fault("stop_resume", "stop", r"fedseg site-2 round 2: training", hold_s=16.0, rounds=24,
          description="SIGSTOP site-2 for 16 s (beyond grace and heartbeat timeout), then SIGCONT"),
    Fault("network_cut", "cut", r"fedseg site-2 round 2: training", hold_s=16.0, rounds=24,
          description="abort every TCP connection of site-2 for 16 s, then let it reconnect"),
    Fault("data_removed", "remove_data", r"fedseg site-2 round 2: training", rounds=5,
          description="delete one of site-2's training images mid-job (the site must notice and leave)"),
)}

# Short waits so that a scenario takes a minute or two on 2 CPU cores.
JOB_ARGS = ["--rounds", "12", "--local-epochs", "1", "--round-timeout", "180", "--straggler-grace", "8",
            "--heartbeat-timeout", "12"]


@dataclass
class Outcome:
    fault: str
    exit_code: int | None
    wall_s: float
    fault_at: float | None = None  # wall-clock time the fault was applied
    detected_s: float | None = None
    ended: dict = field(default_factory=dict)
    participation: dict = field(default_factory=dict)
    late_updates: list = field(default_factory=list)
    cross_site: dict | None = None
    matrix_sites: list = field(default_factory=list)
    final_model: bool = False
    best_model: bool = False
    final_dice: dict = field(default_factory=dict)
    removed_file: str | None = None
    stdout_tail: str = ""


def _client_process(root_pid: int, workspace: Path, site: str):
    """The simulator worker of ``site`` among ``root_pid``'s descendants, in this run's own workspace."""
    import psutil

    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for proc in children:
        try:
            cmd = proc.cmdline()
        except psutil.Error:
            continue
        if "--client" in cmd and cmd[cmd.index("--client") + 1] == site and any(str(workspace) in c for c in cmd):
            return proc
    return None


def _server_ports(proc) -> set[int]:
    """The ports the simulator's server listens on: its client workers' parent process holds them."""
    import psutil

    try:
        parent = proc.parent()
        return {c.laddr.port for c in parent.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
    except (psutil.Error, AttributeError):
        return set()


def _abort_connections(proc, server_ports: set[int]) -> int:
    """Abort ``proc``'s TCP connections to the server (and only those) with ``ss -K``; return how many."""
    import psutil

    try:
        conns = [c for c in proc.net_connections(kind="tcp") if c.raddr and c.raddr.port in server_ports]
    except psutil.Error:
        return 0
    for c in conns:
        subprocess.run(["ss", "-K", "src", c.laddr.ip, "sport", "=", str(c.laddr.port),
                        "dst", c.raddr.ip, "dport", "=", str(c.raddr.port)], capture_output=True)
    return len(conns)


class Injector(threading.Thread):
    """Tails the simulator log and applies ``fault`` to its site's client once the trigger line appears."""

    def __init__(self, fault: Fault, log_path: Path, workspace: Path, root_pid: int, data_dir: Path | None = None):
        super().__init__(daemon=True)
        self.fault, self.log_path, self.workspace, self.root_pid = fault, log_path, workspace, root_pid
        self.data_dir = data_dir
        self.removed: Path | None = None
        self.fault_at: float | None = None
        self.error: str | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # reported in the outcome; the run itself goes on
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.done.set()

    def _run(self) -> None:
        trigger = re.compile(self.fault.trigger)
        while not self.log_path.is_file():
            time.sleep(0.2)
        with open(self.log_path) as fh:
            while not self._finished():
                line = fh.readline()
                if not line:
                    time.sleep(0.1)
                    continue
                if trigger.search(line):
                    break
            else:
                self.error = "the run ended before the trigger line appeared"
                return
        if self.fault.action == "remove_data":  # the run's own copy of the data, never the shared one
            datalist = json.loads((self.data_dir / "splits" / f"{self.fault.site}.json").read_text())
            self.removed = self.data_dir / datalist["training"][0]["image"]
            self.fault_at = time.time()
            self.removed.unlink()
            return
        victim = _client_process(self.root_pid, self.workspace, self.fault.site)
        if victim is None:
            self.error = f"no client process for {self.fault.site} under this run"
            return
        self.fault_at = time.time()
        if self.fault.action == "kill":
            victim.send_signal(signal.SIGKILL)
        elif self.fault.action == "stop":
            victim.send_signal(signal.SIGSTOP)
            time.sleep(self.fault.hold_s)
            victim.send_signal(signal.SIGCONT)
        elif self.fault.action == "cut":
            # Only the link to the server, as a network cut would: the worker's own internal links stay.
            ports = _server_ports(victim)
            end = time.monotonic() + self.fault.hold_s
            while time.monotonic() < end:
                _abort_connections(victim, ports)
                time.sleep(0.2)

    def _finished(self) -> bool:
        try:
            os.kill(self.root_pid, 0)
            return False
        except ProcessLookupError:
            return True


def _stamp(line: str) -> float | None:
    match = _STAMP.match(line)
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() if match else None


def detection_seconds(log_path: Path, site: str, fault_at: float) -> float | None:
    """Seconds from the fault to the first server line after it that names ``site`` as missing, silent or late."""
    named = re.compile(rf"fedseg: .*({site} silent|no answer from {site}|stops waiting for .*{site}|"
                       rf"from {site} for round|{site} went silent)")
    for line in log_path.read_text(errors="replace").splitlines():
        t = _stamp(line)
        if t is not None and t >= fault_at - 0.5 and named.search(line):
            return round(t - fault_at, 1)
    return None


def job_args(rounds: int = 12, local_epochs: int = 1) -> list[str]:
    """The scenario job's ``fedseg simulate`` options: JOB_ARGS with another schedule."""
    args = list(JOB_ARGS)
    args[args.index("--rounds") + 1], args[args.index("--local-epochs") + 1] = str(rounds), str(local_epochs)
    return args


def run_scenario(fault: Fault, data_dir: Path, work: Path, *, python: str = sys.executable,
                 timeout_s: float = 900, args: list[str] | None = None) -> Outcome:
    """One ``fedseg simulate`` run on ``data_dir`` (2 sites) with ``fault`` applied; its end state."""
    run_dir = Path(work) / fault.name
    workspace = run_dir / "workspace"
    if fault.action == "remove_data":  # this scenario changes the data: give it a copy of its own
        import shutil

        copy = run_dir.parent / f"{fault.name}_data"  # beside the run folder: fedseg simulate wants it empty
        if copy.exists():
            shutil.rmtree(copy)
        shutil.copytree(data_dir, copy, ignore=shutil.ignore_patterns("splits"))
        data_dir = copy
    cmd = [python, "-m", "fedseg.cli", "simulate", "--task", "spleen", "--sites", "2", "--data", str(data_dir),
           "--run-dir", str(run_dir), "--overwrite", "--no-report", "--min-clients", str(fault.min_clients),
           *(args or job_args(rounds=fault.rounds))]
    from fedseg.procs import ProcessTree

    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
    tree = ProcessTree(proc.pid)
    injector = None
    if fault.action != "none":
        injector = Injector(fault, run_dir / "simulator.log", workspace, proc.pid, data_dir)
        injector.start()
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        code = proc.returncode
    except subprocess.TimeoutExpired:  # fedseg simulate bounds itself; this is the test's own backstop
        tree.stop()
        out, code = proc.communicate()[0] + "\n[chaos: stopped after the backstop timeout]", None
    outcome = Outcome(fault.name, code, round(time.monotonic() - start, 1), stdout_tail=out[-4000:])
    if injector is not None:
        injector.done.wait(5)
        outcome.fault_at = injector.fault_at
        outcome.removed_file = str(injector.removed) if injector.removed else None
        if injector.error:
            outcome.stdout_tail += f"\n[chaos: injector: {injector.error}]"
        if injector.fault_at is not None:
            outcome.detected_s = detection_seconds(run_dir / "simulator.log", fault.site, injector.fault_at)
    _read_end_state(outcome, run_dir)
    return outcome


def _read_end_state(outcome: Outcome, run_dir: Path) -> None:
    app = next(iter(sorted((run_dir / "workspace").glob("*/server/*/app_server"))), None)
    if app is not None:
        outcome.final_model = (app / "FL_global_model.pt").is_file()
        outcome.best_model = (app / "best_FL_global_model.pt").is_file()
        record = app / "fedseg_federation.json"
        if record.is_file():
            data = json.loads(record.read_text())
            outcome.ended = data.get("ended") or {}
            outcome.late_updates = data.get("late_updates", [])
            outcome.cross_site = data.get("cross_site")
            for entry in data.get("rounds", []):
                for what in ("missed", "withheld", "failed", "left"):
                    for site in entry.get(what, []):
                        outcome.participation.setdefault(site, {}).setdefault(what, []).append(entry["round"])
                for site in entry.get("delivered", []):
                    outcome.participation.setdefault(site, {}).setdefault("delivered", []).append(entry["round"])
    results = run_dir / "results.json"
    if results.is_file():
        body = json.loads(results.read_text())
        final = body.get("models", {}).get("final", {})
        outcome.matrix_sites = sorted(k for k in final if k != "pooled")
        outcome.final_dice = {k: round(v.get("mean", float("nan")), 3) for k, v in final.items()
                              if isinstance(v, dict) and "mean" in v}


def rounds_lost(outcome: Outcome, site: str = "site-2") -> int:
    what = outcome.participation.get(site, {})
    return len(set(what.get("missed", []) + what.get("withheld", []) + what.get("failed", [])))


def table(outcomes: list[Outcome]) -> str:
    head = ["scenario", "exit", "detected after (s)", "rounds lost (site-2)", "rejoined", "ended",
            "final / best / matrix", "final Dice site-1", "final Dice pooled", "wall (s)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for o in outcomes:
        delivered = o.participation.get("site-2", {}).get("delivered", [])
        lost = o.participation.get("site-2", {})
        first_lost = min((r for k in ("missed", "withheld", "failed") for r in lost.get(k, [])), default=None)
        rejoined = "yes" if first_lost is not None and any(r > first_lost for r in delivered) else "no"
        rows.append("| " + " | ".join([
            o.fault, str(o.exit_code), "-" if o.detected_s is None else f"{o.detected_s:.1f}", str(rounds_lost(o)),
            rejoined if o.fault != "none" else "-", o.ended.get("reason", "?"),
            " / ".join("yes" if x else "no" for x in (o.final_model, o.best_model, bool(o.matrix_sites)))
            + f" ({', '.join(o.matrix_sites)})",
            str(o.final_dice.get("site-1", "-")), str(o.final_dice.get("pooled", "-")), f"{o.wall_s:.0f}",
        ]) + " |")
    return "\n".join(rows)


def make_data(root: Path, cases: int = 9, seed: int = 5) -> Path:
    from fedseg.data.synth import synthesize

    data = Path(root) / "data"
    if not (data / "dataset.json").is_file():
        synthesize("spleen", data, cases=cases, seed=seed, workers=2)
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/chaos.json")
    p.add_argument("--work", default="runs/chaos")
    p.add_argument("--only", nargs="+", choices=sorted(FAULTS), default=None)
    p.add_argument("--cases", type=int, default=16, help="phantoms, split over 2 sites")
    p.add_argument("--local-epochs", type=int, default=4,
                   help="per round (the tests use 1; more makes the Dice comparison meaningful)")
    a = p.parse_args(argv)
    work = Path(a.work).resolve()
    data = make_data(work, cases=a.cases)
    # One schedule for every scenario (the longest any needs), so final Dice compares like with like.
    args = job_args(rounds=max(f.rounds for f in FAULTS.values()), local_epochs=a.local_epochs)
    names = a.only or list(FAULTS)
    if "none" not in names:
        names = ["none", *names]
    outcomes = []
    for name in names:
        print(f"chaos: {name}: {FAULTS[name].description}", flush=True)
        outcomes.append(run_scenario(FAULTS[name], data, work, args=args, timeout_s=1800))
        print(table(outcomes[-1:]).splitlines()[-1], flush=True)
    print(table(outcomes))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"job_args": args, "cases": a.cases, "faults": {n: asdict(FAULTS[n]) for n in names},
                                       "outcomes": [asdict(o) for o in outcomes]}, indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
