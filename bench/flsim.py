"""Running fedseg's FedAvg job in the NVFlare simulator under measurement.

The job is exported and run with :mod:`fedseg.flare.simulate`'s own functions (``prepare_sites``,
``export_job``, ``run_simulator``). Measured on the side:

* a timeline from the simulator log: launch, each ``Round r started``, ``Finished FedAvg``, exit;
* peak resident memory per process of the simulator's process tree, polled with psutil. The
  server lives in the process that starts the ``simulator_worker`` client processes (NVFlare runs
  the server app in threads of that process), so its pid is the workers' parent.

Cross-site evaluation is removed from the exported job unless asked for: it is not part of a
round, and it would add the same constant to every run on top of the rounds being measured.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_ROUND = re.compile(r"Round (\d+) started")


class TreeMonitor:
    """Polls the RSS of every descendant of this process; remembers each pid's peak and parent."""

    def __init__(self, interval_s: float = 0.2):
        import psutil

        self._psutil, self.interval_s = psutil, interval_s
        self.peak: dict[int, int] = {}
        self.info: dict[int, tuple[str, int]] = {}
        self.tree_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> "TreeMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        me = self._psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in me.children(recursive=True):
                try:
                    rss = p.memory_info().rss
                    # Re-read every time: a child first seen between fork and exec shows its parent's command.
                    self.info[p.pid] = (" ".join(p.cmdline()), p.ppid())
                except (self._psutil.NoSuchProcess, self._psutil.AccessDenied, self._psutil.ZombieProcess):
                    continue
                total += rss
                self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss)
            self.tree_peak = max(self.tree_peak, total)
            self._stop.wait(self.interval_s)

    def summary(self) -> dict:
        workers = [pid for pid, (cmd, _) in self.info.items() if "simulator_worker" in cmd]
        servers = {self.info[w][1] for w in workers}
        mb = 2**20
        return {
            "server_peak_rss_mb": max((self.peak.get(s, 0) for s in servers), default=0) / mb,
            "client_peak_rss_mb": [self.peak[w] / mb for w in sorted(workers)],
            "tree_peak_rss_mb": self.tree_peak / mb,
            "processes_seen": len(self.info),
        }


@dataclass
class SimRun:
    sites: int
    rounds: int
    local_epochs: int
    wall_s: float
    timeline: dict
    memory: dict
    site_round_s: dict[str, list[float]] = field(default_factory=dict)
    run_dir: str = ""

    def as_json(self) -> dict:
        return self.__dict__.copy()


def parse_timeline(log_path: Path, launched: float, ended: float) -> dict:
    """Seconds from launch to the first round, per round, and from the end of FedAvg to the simulator's exit."""
    stamp, starts, finished = None, {}, None
    for line in Path(log_path).read_text(errors="replace").splitlines():
        m = _STAMP.match(line)
        if m:
            stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        r = _ROUND.search(line)
        if r and stamp is not None:
            starts.setdefault(int(r.group(1)), stamp)
        if "Finished FedAvg" in line and stamp is not None:
            finished = stamp
    if not starts or finished is None:
        return {"parsed": False}
    order = [starts[r] for r in sorted(starts)] + [finished]
    return {"parsed": True, "startup_s": order[0] - launched,
            "round_s": [b - a for a, b in zip(order, order[1:])], "shutdown_s": ended - finished}


def site_round_seconds(workspace: Path) -> dict[str, list[float]]:
    """Each site's own record of a round's local work (validation + training), kept in its workspace."""
    out = {}
    for path in sorted(Path(workspace).glob("site-*/**/fedseg/*_rounds.jsonl")):
        site = path.relative_to(workspace).parts[0]
        out[site] = [json.loads(line)["seconds"] for line in path.read_text().splitlines() if line.strip()]
    return out


def drop_cross_site_eval(job_dir: Path) -> None:
    """Remove NVFlare's cross-site evaluation workflow from an exported job (benchmark copy only)."""
    path = Path(job_dir) / "app" / "config" / "config_fed_server.json"
    config = json.loads(path.read_text())
    config["workflows"] = [w for w in config["workflows"] if "CrossSiteModelEval" not in w["path"]]
    path.write_text(json.dumps(config, indent=2))


def run_job(run_dir: Path, data_dir: Path, *, sites: int, rounds: int, local_epochs: int, cases: int,
            seed: int = 0, cross_site: bool = False, quiet: bool = True, variant: str = "tiny",
            config_dir: Path | None = None, algorithm: str = "fedavg") -> SimRun:
    """Run the job on ``sites`` sites; returns its measurements (the workspace stays in ``run_dir``).

    Without ``config_dir``, ``data_dir`` is split IID over the sites and their YAMLs written (1 torch
    thread each) by ``fedseg simulate``'s own ``prepare_sites``; with it, those site YAMLs are used.
    """
    from fedseg.flare.jobs import JobSpec, export_job
    from fedseg.flare.simulate import prepare_sites, run_simulator

    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    job = JobSpec("spleen", algorithm=algorithm, variant=variant, num_rounds=rounds, local_epochs=local_epochs,
                  min_clients=min(2, sites), seed=seed)
    if config_dir is None:
        config_dir = prepare_sites("spleen", data_dir, sites, run_dir, cases=cases, seed=seed)
    job_dir = export_job(job, run_dir / "job")
    if not cross_site:
        drop_cross_site_eval(job_dir)
    workspace, log_path = run_dir / "workspace", run_dir / "simulator.log"
    sink = io.StringIO()
    launched = time.time()
    with TreeMonitor() as monitor, (contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext()):
        run_simulator(job_dir, workspace, sites, site_config_dir=config_dir, log_path=log_path)
    ended = time.time()
    return SimRun(sites, rounds, local_epochs, ended - launched, parse_timeline(log_path, launched, ended),
                  monitor.summary(), site_round_seconds(workspace), str(run_dir))
