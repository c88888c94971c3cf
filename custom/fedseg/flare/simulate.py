"""``fedseg simulate``: the local multi-site demo on the NVFlare simulator.

Synthesizes phantoms (if the dataset is missing), splits them across sites, writes each site's
YAML, runs the job's recipe through NVFlare's ``SimEnv`` (in a bounded child process, see
:mod:`fedseg.flare.sim_child`), and turns the server workspace into a table of the final and
best global models' Dice on every site's test cases. The exported job folder is kept beside it
(``job/``): the same job runs unchanged under ``nvflare simulator`` or ``nvflare job submit``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fedseg.data.msd import read_dataset_info
from fedseg.data.split import split_dataset
from fedseg.data.synth import synthesize
from fedseg.errors import FedsegError
from fedseg.flare.allow_list import allow_classes, required_classes
from fedseg.flare.jobs import DEADLINES, JobSpec, export_job, resumed
from fedseg.flare.results import BEST_MODEL, FINAL_MODEL, JobResults, read_job_results
from fedseg.procs import run_bounded
from fedseg.results import SiteScore, models_to_json, render_table, write_json
from fedseg.site_config import ENV_DIR, write_site_config

log = logging.getLogger("fedseg")
SIM_WORKSPACE_ENV = "NVFLARE_SIMULATOR_WORKSPACE_ROOT"


@dataclass
class SimulationResult:
    models: dict[str, dict[str, SiteScore]]
    class_names: tuple[str, ...]
    best_round: int | None
    wall_time_s: float
    simulator_time_s: float
    workspace: Path
    results: JobResults
    failed_sites: list[str]

    def table(self) -> str:
        """The Dice table; for Deepgrow also the final model's pooled Dice after N clicks."""
        curve = self.results.click_curve(FINAL_MODEL)
        if not curve:
            return render_table(self.models, self.class_names)
        clicks = "\n\n| clicks | " + " | ".join(map(str, curve)) + " |\n" + "|---" * (len(curve) + 1) + "|\n"
        clicks += "| final global, pooled test Dice | " + " | ".join(f"{v:.3f}" for v in curve.values()) + " |"
        return render_table(self.models, self.class_names) + clicks


def prepare_sites(task: str, data_dir: Path, n_sites: int, run_dir: Path, *, cases: int, seed: int,
                  shares: list[float] | None = None, num_threads: int = 1,
                  backends: dict[str, str] | None = None, splits_dir: Path | None = None) -> Path:
    """Make sure the dataset exists, split it and write one YAML per site; return the YAML folder.

    ``backends`` names the sites that train elsewhere than in process (e.g. ``{"site-1": "ray"}``);
    the datalists go to ``splits_dir`` (default: ``data_dir/splits``).
    """
    from fedseg.backends import backend_names

    backends = dict(backends or {})
    expected = {f"site-{k}" for k in range(1, n_sites + 1)}
    for site, backend in backends.items():
        if site not in expected or backend not in backend_names():
            raise FedsegError(f"--site-backend {site}={backend}: the sites are site-1 .. site-{n_sites} and the "
                              f"backends {', '.join(backend_names())}")
    data_dir = Path(data_dir)
    if not (data_dir / "dataset.json").is_file():
        log.info("synthesizing %d %s phantoms into %s", cases, task, data_dir)
        synthesize(task, data_dir, cases, seed=seed, workers=min(2, os.cpu_count() or 1))
    splits = split_dataset(data_dir, n_sites, splits_dir or data_dir / "splits", seed=seed, shares=shares)
    config_dir = Path(run_dir) / "site_configs"
    for k in range(1, n_sites + 1):
        site = f"site-{k}"
        write_site_config(config_dir / f"{site}.yaml", site, {task: (data_dir, splits[site])},
                          device="auto", num_threads=num_threads, cache_rate=1.0, num_workers=0,
                          **({"backend": backends[site]} if site in backends else {}))
    return config_dir


def nvflare_command() -> list[str]:
    exe = shutil.which("nvflare", path=str(Path(sys.executable).parent)) or shutil.which("nvflare")
    return [exe] if exe else [sys.executable, "-m", "nvflare.cli"]


def job_bounds(job: JobSpec) -> tuple[float, float]:
    """How long a job may print nothing, and run in all, before the simulator is stopped (seconds).

    From the job's own round deadline: a live job logs at least once per round and per cross-site
    validation, each bounded by that deadline; start-up and shutdown add a few minutes.
    """
    return job.deadlines.round + 180, (job.num_rounds + 3) * job.deadlines.round + 600


def _bounded_simulator(cmd: list[str], workspace: Path, *, site_config_dir: Path | None, log_path: Path,
                       bounds: tuple[float, float], cwd: Path | None = None,
                       stop: threading.Event | None = None) -> float:
    """Run a simulator command under :func:`fedseg.procs.run_bounded`; return its wall time.

    Raises :class:`FedsegError` when it was stopped, or when it failed without leaving cross-site results.
    """
    env = {k: v for k, v in os.environ.items() if k != SIM_WORKSPACE_ENV}  # it would move the workspace
    env["PYTHONUNBUFFERED"] = "1"
    # The simulated sites train at the same time on one machine's cores. OpenMP's default of spinning
    # while it waits then burns the cores the other sites need: two 2-thread trainings side by side on
    # 2 cores took 3.6-7.6x as long as one alone, 1.8-2.1x with passive waiting (bench/README.md, "Threads").
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if site_config_dir is not None:
        env[ENV_DIR] = str(Path(site_config_dir).resolve())
    idle, total = bounds
    log.info("running: %s", " ".join(cmd))
    # "End the Simulator run." is NVFlare's last word once the job is over; a hung client worker
    # (a site cut off mid-task) can keep the simulator from exiting, so it gets a minute, not forever.
    done = run_bounded(cmd, env=env, log_path=log_path, idle_timeout=idle, total_timeout=total, show=_worth_showing,
                       done_line="End the Simulator run", cwd=cwd, stop=stop)
    finished = bool(list(Path(workspace).glob("server/*/cross_site_val/cross_val_results.json")))
    if done.stopped_because and not finished:
        raise FedsegError(f"nvflare simulator stopped by fedseg: {done.stopped_because}; see {log_path}")
    if done.stopped_because or done.returncode != 0:
        if not finished:
            raise FedsegError(f"nvflare simulator exited with code {done.returncode}; see {log_path}")
        log.warning("nvflare simulator %s after the job wrote its results; see %s",
                    done.stopped_because or f"exited with code {done.returncode}", log_path)
    return done.seconds


def run_sim_env(job: JobSpec, workspace_root: Path, n_sites: int, *, job_dir: Path, site_config_dir: Path | None,
                log_path: Path, client_script: Path | None = None, initial_weights: Path | None = None,
                stop: threading.Event | None = None) -> Path:
    """Run ``job`` through ``recipe.execute(SimEnv(...))`` in a bounded child process; return the workspace.

    The workspace is ``workspace_root/<job.name>`` (SimEnv's layout). ``job_dir`` (the same job,
    exported) says which classes the simulated sites must allow. Setting ``stop`` (from another
    thread) stops the simulator and every process it started.
    """
    workspace = Path(workspace_root).resolve() / job.name
    if workspace.exists():
        shutil.rmtree(workspace)
    # SimEnv installs NVFlare's default allow list unless one is there: put fedseg's in first.
    allow_classes(workspace / "local", required_classes([job_dir]))
    run_file = Path(log_path).with_name("sim_env.json")
    run_file.write_text(json.dumps({
        "job": asdict(job), "clients": [f"site-{k}" for k in range(1, n_sites + 1)],
        "workspace_root": str(Path(workspace_root).resolve()),
        "client_script": str(Path(client_script).resolve()) if client_script else None,
        "initial_weights": str(Path(initial_weights).resolve()) if initial_weights else None}, indent=2))
    cmd = [sys.executable, "-m", "fedseg.flare.sim_child", str(run_file)]
    seconds = _bounded_simulator(cmd, workspace, site_config_dir=site_config_dir, log_path=log_path,
                                 bounds=job_bounds(job), stop=stop)
    log.info("fedseg: simulator finished in %.0f s", seconds)
    return workspace


def run_simulator(job_dir: Path, workspace: Path, n_sites: int, *, site_config_dir: Path | None,
                   log_path: Path) -> float:
    """Run a job folder as a user types it, ``nvflare simulator JOB -w WS -n N -t N`` (deprecated in 2.9,
    kept for hand-edited job folders); return its wall time. Bounded as :func:`run_sim_env`.
    """

    if Path(workspace).exists():
        shutil.rmtree(workspace)
    # The simulator copies WORKSPACE/local into every participant: allow the classes the job names.
    allow_classes(Path(workspace) / "local", required_classes([job_dir]))
    cmd = nvflare_command() + ["simulator", str(job_dir), "-w", str(workspace), "-n", str(n_sites), "-t", str(n_sites)]
    return _bounded_simulator(cmd, workspace, site_config_dir=site_config_dir, log_path=log_path,
                              bounds=folder_bounds(job_dir))


def folder_bounds(job_dir: Path) -> tuple[float, float]:
    """:func:`job_bounds` read off an exported job folder's server config."""
    config = json.loads((Path(job_dir) / "app" / "config" / "config_fed_server.json").read_text())
    args = next((w.get("args", {}) for w in config.get("workflows", []) if "round_timeout" in w.get("args", {})), {})
    round_timeout = float(args.get("round_timeout", DEADLINES["full"].round))
    rounds = int(args.get("num_rounds", 1))
    return round_timeout + 180, (rounds + 3) * round_timeout + 600


def _worth_showing(line: str) -> bool:
    """Keep the demo's console readable: fedseg's own progress and warnings, round starts and errors."""
    return ("fedseg " in line or "fedseg:" in line or ("Round " in line and "started" in line) or " ERROR " in line
            or "Traceback" in line)


def failed_sites(results: JobResults, n_sites: int) -> list[str]:
    """Sites that missed, withheld or failed a training round, left, or were absent from cross-site evaluation."""
    expected = {f"site-{k}" for k in range(1, n_sites + 1)}
    failed = (expected - set(results.sites)) | set(results.participation()) | set(results.ended.get("sites", []))
    for r in results.rounds:
        failed |= expected - {s["name"] for s in r.get("sites", [])}
    return sorted(failed)


def summarize(workspace: Path, class_names: tuple[str, ...]) -> tuple[JobResults, dict]:
    """The final and best global models' test scores; sites that failed are simply absent."""
    results = read_job_results(workspace)
    if not results.sites:
        raise FedsegError(f"{results.job_dir}: no site reported cross-site evaluation results"
                          + (f" ({results.ended['message']})" if results.ended.get("message") else ""))
    models = {"final": results.scores(FINAL_MODEL, class_names)}
    # NVFlare selects no best model in a 1-round job (round 0 is never a candidate).
    if BEST_MODEL in results.model_names():
        models[f"best (round {results.best_round})"] = results.scores(BEST_MODEL, class_names)
    return results, models


def simulate(job: JobSpec, *, n_sites: int, data_dir: Path, run_dir: Path, cases: int, seed: int = 0,
             client_script: Path | None = None, shares: list[float] | None = None,
             initial_weights: Path | None = None, site_backends: dict[str, str] | None = None,
             site_configs: dict[str, Path] | None = None, stop: threading.Event | None = None,
             report: bool = True) -> SimulationResult:
    """The whole demo: data, split, site YAMLs, job, simulator, results table and ``results.json``.

    ``initial_weights`` (a model file or MONAI bundle that fits the task) is the starting global model;
    ``client_script`` replaces the installed fedseg client (tests ship fault injectors);
    ``site_backends`` (e.g. ``{"site-1": "ray"}``) lets sites train elsewhere than in process.
    ``site_configs`` (``{"site-1": YAML, ...}``, all in one folder) are used as they are instead of
    splitting ``data_dir`` IID (e.g. a scanner split's sites). ``stop``: see :func:`run_sim_env`.
    ``report=False`` skips what only a person reads (per-case scores, overlay pictures, ``report.md``);
    ``results.json`` is written either way.
    """
    start = time.perf_counter()
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    # What ran, so that a stopped run can be resumed (fedseg simulate --resume RUN_DIR).
    (run_dir / "run.json").write_text(json.dumps({"job": asdict(job), "sites": n_sites, "data": str(Path(data_dir).resolve()),
                                                  "cases": cases, "seed": seed, "shares": shares,
                                                  "site_backends": site_backends or {}}, indent=2))
    if site_configs:
        config_dir = _given_sites(site_configs, n_sites)
    else:
        config_dir = prepare_sites(job.task, data_dir, n_sites, run_dir, cases=cases, seed=seed, shares=shares,
                                   backends=site_backends)
    # The record of what ran (and the list of classes the sites must allow): the same job, exported.
    job_dir = export_job(job, run_dir / "job", client_script=client_script, initial_weights=initial_weights)
    sim_start = time.perf_counter()
    workspace = run_sim_env(job, run_dir / "workspace", n_sites, job_dir=job_dir, site_config_dir=config_dir,
                            log_path=run_dir / "simulator.log", client_script=client_script,
                            initial_weights=initial_weights, stop=stop)
    sim_time = time.perf_counter() - sim_start
    class_names = read_dataset_info(data_dir).foreground_labels
    results, models = summarize(workspace, class_names)
    failed = failed_sites(results, n_sites)
    local = evaluate_where_the_data_is(job, config_dir, n_sites, results, run_dir, exclude=failed) if report else {}
    wall = time.perf_counter() - start
    record_results(run_dir, job, n_sites, class_names, results, models, failed, wall_time_s=round(wall, 1),
                   simulator_time_s=round(sim_time, 1), job_dir=str(job_dir), workspace=str(workspace),
                   training_cases=training_cases(config_dir, job.task, n_sites), report=report, **local)
    return SimulationResult(models, class_names, results.best_round, wall, sim_time, workspace, results, failed)


def _given_sites(site_configs: dict[str, Path], n_sites: int) -> Path:
    expected = [f"site-{k}" for k in range(1, n_sites + 1)]
    folders = {Path(p).resolve().parent for p in site_configs.values()}
    if sorted(site_configs) != sorted(expected) or len(folders) != 1:
        raise FedsegError(f"site_configs must name {', '.join(expected)}, each <site>.yaml in one folder; "
                          f"got {dict(site_configs)}")
    for site, path in site_configs.items():
        if Path(path).name != f"{site}.yaml":
            raise FedsegError(f"{path}: the simulated {site} reads {site}.yaml from its folder")
    return folders.pop()


def training_cases(config_dir: Path, task: str, n_sites: int) -> dict[str, int]:
    """Training cases per simulated site, from the datalists their YAMLs name."""
    from fedseg.site_config import load_site_config

    out = {}
    for k in range(1, n_sites + 1):
        try:
            datalist = load_site_config(Path(config_dir) / f"site-{k}.yaml").task_data(task).datalist
            out[f"site-{k}"] = len(json.loads(Path(datalist).read_text()).get("training", []))
        except (FedsegError, OSError, ValueError) as exc:
            log.warning("fedseg: training cases of site-%d unknown: %s", k, exc)
    return out


def evaluate_where_the_data_is(job: JobSpec, config_dir: Path, n_sites: int, results: JobResults, run_dir: Path,
                               *, exclude: tuple[str, ...] | list[str] = (), overlays: int = 3) -> dict:
    """Per-case Dice of the final and best global models, and overlay pictures, on every site's test cases.

    This happens here, outside the federation: the simulator's machine holds every simulated site's
    images, and nothing of it is sent anywhere (at a real site, ``fedseg evaluate`` does the same
    with its own data). Skipped for interactive tasks (see the Dice-vs-clicks curve), for
    ``privacy="exclude"`` (the server's model lacks the sites' own normalization layers), for
    failed sites, and, with a warning, when anything goes wrong: the federated results stand alone.
    """
    from fedseg.engine import Runtime
    from fedseg.site_config import load_site_config
    from fedseg.site_data import open_site_data
    from fedseg.site_eval import score_cases, write_overlays
    from fedseg.tasks import get_task
    from fedseg.tasks.kinds import task_kind

    spec = get_task(job.task, job.variant)
    if not task_kind(spec).volume_pictures or job.privacy == "exclude":
        return {}
    app = Path(results.job_dir) / "app_server"
    models = {"final": app / "FL_global_model.pt"}
    if BEST_MODEL in results.model_names() and (app / "best_FL_global_model.pt").is_file():
        models[f"best (round {results.best_round})"] = app / "best_FL_global_model.pt"
    try:
        sites = [load_site_config(Path(config_dir) / f"site-{k}.yaml") for k in range(1, n_sites + 1)]
        data = [open_site_data(spec, s) for s in sites if s.site not in exclude]
        runtime = Runtime.create("auto")
        per_case = score_cases(spec, models, data, runtime, seed=job.seed)
        shown = next(reversed(models))  # the best model when there is one: the one a site would deploy
        pictures = write_overlays(spec, models[shown], data, run_dir, runtime, model_label=f"federated {shown}",
                                  max_cases=overlays)
    except (FedsegError, OSError, RuntimeError, ValueError) as exc:
        log.warning("fedseg: per-case scores and overlay pictures skipped: %s", exc)
        return {}
    return {"per_case_dice": per_case, "overlays": [p.name for p in pictures],
            "per_case_source": "global models scored by the simulator on every site's test cases (not sent by sites)"}


def record_results(run_dir: Path, job: JobSpec, n_sites: int, class_names, results: JobResults, models: dict,
                   failed: list[str], *, report: bool = True, **extra) -> None:
    """``results.json`` (the table as JSON) and, with ``report``, the full report (``report.md``, JSON, plots)."""
    write_json(Path(run_dir) / "results.json", {
        "task": job.task, "variant": job.variant, "algorithm": job.algorithm, "privacy": job.privacy,
        "sites": n_sites, "rounds": job.num_rounds, "start_round": job.start_round, "local_epochs": job.local_epochs,
        "classes": list(class_names), "best_round": results.best_round,
        "best_round_meaning": "round whose incoming global model scored the best mean validation Dice",
        "models": models_to_json(models), "failed_sites": failed, "ended": results.ended,
        "participation": results.participation(),
        "cross_site": (results.federation or {}).get("cross_site"), **extra,
        **({"click_curve": curve} if (curve := {"final": results.click_curve(FINAL_MODEL)})["final"] else {}),
    })
    if report:
        from fedseg.flare.report import write_report

        write_report(run_dir, run_dir)


def resume_run(run_dir: Path) -> SimulationResult:
    """Continue a stopped simulator run from its last saved global model, in ``run_dir/resumed``."""
    run_dir = Path(run_dir).resolve()
    record = run_dir / "run.json"
    if not record.is_file():
        raise FedsegError(f"{run_dir}: not a fedseg simulate run folder (no run.json)")
    info = json.loads(record.read_text())
    stopped = JobSpec(**info["job"])
    saved = run_dir / "workspace" / stopped.name / "server" / "simulate_job" / "app_server" / "FL_global_model.pt"
    if not saved.is_file():
        raise FedsegError(f"{saved}: no global model was saved, so there is nothing to resume from")
    kept = run_dir / "resume_from.pt"
    shutil.copyfile(saved, kept)  # the new run gets its own workspace; keep the model outside it
    job = resumed(stopped, kept)
    log.info("resuming %s at round %d of %d from %s", job.task, job.start_round, job.start_round + job.num_rounds, kept)
    return simulate(job, n_sites=info["sites"], data_dir=Path(info["data"]), run_dir=run_dir / "resumed",
                    cases=info["cases"], seed=info["seed"], shares=info["shares"],
                    site_backends=info.get("site_backends"))
