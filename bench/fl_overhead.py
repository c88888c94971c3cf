"""FL overhead: FedAvg in the NVFlare simulator against the same sites training at once without NVFlare.

The simulator runs fedseg's FedAvg job (tiny spleen, 2 sites, 1 torch thread per site, the two
client processes training in parallel) for R1 and R2 rounds. The reference runs the same 2 sites
the same way, in parallel, without NVFlare: one local process per site (spawned, so each pays
its own imports as a simulator client does), each with the runtime its site YAML asks for (1
thread) and a :class:`fedseg.runners.site.LocalSiteTrainer` seeded as its FL client seeds it.
Every round the coordinating process sends both the global weights; each scores them on its
validation cases and trains the same local epochs, as the FL client does; the coordinator
averages the updates weighted by training cases, as FedAvg does. Both include opening and
checking the sites' data.

From the two round counts: per-round time of each (slope) and fixed cost (intercept); NVFlare's
cost is the difference of the slopes (per round) and of the intercepts (fixed). The simulator's
own log gives start-up (launch to round 0) and shut-down too.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from bench.common import Settings, ratio, synth_dataset
from bench.flsim import run_job


def fedavg(updates: list[tuple[dict, int]]) -> dict[str, torch.Tensor]:
    """Case-weighted average of state dicts (integer buffers are averaged then cast back, as NVFlare does)."""
    total = float(sum(n for _, n in updates))
    out = {}
    for key, first in updates[0][0].items():
        acc = sum(w[key].double() * (n / total) for w, n in updates)
        out[key] = acc.to(first.dtype)
    return out


SITE_START_TIMEOUT_S = 600  # a site process's imports, data check and caching (2 cores, under load)
ROUND_TIMEOUT_S = 600


def _site_process(config_path: str, seed: int, conn) -> None:
    """One site's side of the local reference: build its trainer, then serve rounds until told to stop."""
    import zlib

    from fedseg.engine import Runtime
    from fedseg.runners.site import LocalSiteTrainer
    from fedseg.site_config import load_site_config
    from fedseg.site_data import open_site_data
    from fedseg.tasks import get_task
    from fedseg.transforms import seed_from

    cfg = load_site_config(Path(config_path))
    # The FL client builds its runtime and seeds its trainer the same way (fedseg.flare.client).
    trainer = LocalSiteTrainer(open_site_data(get_task("spleen", "tiny"), cfg), Runtime.for_site(cfg),
                               seed=seed_from(seed, zlib.crc32(cfg.site.encode())))
    conn.send("ready")
    while (msg := conn.recv()) is not None:
        weights, epochs, progress = msg
        start = time.perf_counter()
        trainer.evaluate(weights, "validation")
        result = trainer.train(weights, epochs, progress=progress)
        conn.send((result.weights, result.n_samples, time.perf_counter() - start))
    trainer.close()


def _receive(conn, timeout: float, what: str):
    if not conn.poll(timeout):
        raise TimeoutError(f"local FL reference: no {what} within {timeout:.0f} s")
    return conn.recv()


def local_rounds(config_dir: Path, sites: int, rounds: int, local_epochs: int, seed: int = 0) -> dict:
    """The sites' rounds, one process per site training at once; returns set-up, per-round and total seconds."""
    import multiprocessing

    from fedseg.networks import build_network
    from fedseg.tasks import get_task

    start = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    procs, conns = [], []
    try:
        for k in range(1, sites + 1):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_site_process, args=(str(Path(config_dir) / f"site-{k}.yaml"), seed, theirs),
                               daemon=True)
            proc.start()
            procs.append(proc)
            conns.append(mine)
        for conn in conns:
            if _receive(conn, SITE_START_TIMEOUT_S, "site start-up") != "ready":
                raise RuntimeError("local FL reference: a site process did not start")
        torch.manual_seed(seed)
        weights = {k: v.clone() for k, v in build_network(get_task("spleen", "tiny")).state_dict().items()}
        setup = time.perf_counter() - start
        round_s, site_s = [], []
        for r in range(rounds):
            t0 = time.perf_counter()
            for conn in conns:
                conn.send((weights, local_epochs, (r / rounds, (r + 1) / rounds)))
            replies = [_receive(conn, ROUND_TIMEOUT_S, f"round {r} update") for conn in conns]
            weights = fedavg([(w, n) for w, n, _ in replies])
            round_s.append(time.perf_counter() - t0)
            site_s.append([s for _, _, s in replies])
        for conn in conns:
            conn.send(None)
        for proc in procs:
            proc.join(timeout=60)
    finally:
        for proc in procs:  # only the processes started here, by their handles
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)
    return {"setup_s": setup, "round_s": round_s, "site_round_s": site_s, "total_s": time.perf_counter() - start}


def run(settings: Settings, work: Path, keep: dict | None = None) -> dict:
    """Both simulator runs and both local runs; ``keep["sim_runs"]`` receives the longer simulator run
    keyed by (sites, cases per site), for the scale comparison to reuse."""
    r1, r2 = settings.fl_rounds
    data = synth_dataset(work / "fl_overhead" / "spleen", settings.fl_cases)
    sim = {r: run_job(work / "fl_overhead" / f"sim_r{r}", data, sites=2, rounds=r, local_epochs=1,
                      cases=settings.fl_cases) for r in (r1, r2)}
    if keep is not None:
        keep.setdefault("sim_runs", {})[(2, settings.fl_cases // 2)] = sim[r2]
    config_dir = Path(sim[r1].run_dir) / "site_configs"
    local = {r: local_rounds(config_dir, 2, r, 1) for r in (r1, r2)}
    sim_slope = (sim[r2].wall_s - sim[r1].wall_s) / (r2 - r1)
    local_slope = (local[r2]["total_s"] - local[r1]["total_s"]) / (r2 - r1)
    sim_fixed = sim[r1].wall_s - r1 * sim_slope
    local_fixed = local[r1]["total_s"] - r1 * local_slope
    timeline = sim[r2].timeline
    # Inside a simulator round: what the slowest site spent on its own work vs the round's length.
    site_work = [max(v[i] for v in sim[r2].site_round_s.values()) for i in range(r2)] if sim[r2].site_round_s else []
    in_round = ([a - b for a, b in zip(timeline.get("round_s", []), site_work)] if timeline.get("parsed") else [])
    # Steady rounds (all but round 0, which starts the sites and caches their data) inside the longer runs:
    # one run each, so the other runs' fixed costs do not blur the per-round figure.
    steady_sim = statistics.median(timeline["round_s"][1:]) if timeline.get("parsed") and r2 > 1 else float("nan")
    steady_local = statistics.median(local[r2]["round_s"][1:]) if r2 > 1 else float("nan")
    return {
        "task": "spleen/tiny", "sites": 2, "local_epochs": 1, "rounds": [r1, r2], "cases": settings.fl_cases,
        "threads": {"simulator": "1 per site, sites in parallel", "local": "1 per site, sites in parallel"},
        "simulator": {str(r): s.as_json() for r, s in sim.items()},
        "local": {str(r): v for r, v in local.items()},
        "total_ratio_simulator_over_local": ratio(sim[r2].wall_s, local[r2]["total_s"]),
        "per_round_s": {"simulator": sim_slope, "local": local_slope},
        "fixed_s": {"simulator": sim_fixed, "local": local_fixed},
        "fl_cost_per_round_s": sim_slope - local_slope,
        "steady_round_s": {"simulator": steady_sim, "local": steady_local},
        "fl_cost_per_steady_round_s": steady_sim - steady_local,
        "goal_per_round_s": 1.0,
        "fl_startup_cost_s": sim_fixed - local_fixed,
        "simulator_startup_to_round0_s": timeline.get("startup_s"),
        "simulator_shutdown_s": timeline.get("shutdown_s"),
        "simulator_round_minus_slowest_site_work_s": in_round,
    }


def rows(result: dict) -> list[list]:
    r1, r2 = result["rounds"]
    sim, loc = result["simulator"], result["local"]
    return [
        [f"FL overhead: simulator, {r1} / {r2} rounds", f"{sim[str(r1)]['wall_s']:.1f} / {sim[str(r2)]['wall_s']:.1f} s",
         f"start-up to round 0 {result['simulator_startup_to_round0_s'] or float('nan'):.1f} s, "
         f"shut-down {result['simulator_shutdown_s'] or float('nan'):.1f} s",
         f"{result['total_ratio_simulator_over_local']:.3g}"],
        [f"FL overhead: local, {r1} / {r2} rounds", f"{loc[str(r1)]['total_s']:.1f} / {loc[str(r2)]['total_s']:.1f} s",
         f"set-up {loc[str(r2)]['setup_s']:.1f} s", ""],
        ["FL overhead: NVFlare's cost per round", f"{result['fl_cost_per_steady_round_s']:.2f} s/round",
         f"steady round {result['steady_round_s']['simulator']:.2f} s vs {result['steady_round_s']['local']:.2f} s local; "
         f"from the totals {result['fl_cost_per_round_s']:.2f} s/round",
         f"goal <= {result['goal_per_round_s']:.0f} s; fixed {result['fl_startup_cost_s']:.1f} s"],
    ]
