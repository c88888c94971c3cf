"""FL overhead: FedAvg in the NVFlare simulator against the same local work without NVFlare.

The simulator runs fedseg's FedAvg job (tiny spleen, 2 sites, 1 torch thread per site, both
sites in parallel) for R1 and R2 rounds. The reference does what the sites do, in one process,
one site after the other, each with the runtime its site YAML asks for (1 thread, as in the
simulator): each round every site's
:class:`fedseg.runners.site.LocalSiteTrainer` scores the global model on its validation cases and
trains the same local epochs on it (same seeds as the FL client), then the updates are averaged
weighted by training cases, as FedAvg does. Both include opening and checking the sites' data.

From the two round counts: per-round time of each (slope), fixed cost (intercept), and NVFlare's
share of each; the simulator's own log gives start-up (launch to round 0) and shut-down too.
"""

from __future__ import annotations

import time
import zlib
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


def local_rounds(config_dir: Path, sites: int, rounds: int, local_epochs: int, seed: int = 0) -> dict:
    """The sites' rounds done sequentially in this process; returns set-up, per-round and total seconds."""
    from fedseg.engine import Runtime
    from fedseg.networks import build_network
    from fedseg.runners.site import LocalSiteTrainer
    from fedseg.site_config import load_site_config
    from fedseg.site_data import open_site_data
    from fedseg.tasks import get_task
    from fedseg.transforms import seed_from

    start = time.perf_counter()
    spec = get_task("spleen", "tiny")
    trainers = []
    for k in range(1, sites + 1):
        cfg = load_site_config(Path(config_dir) / f"site-{k}.yaml")
        # The FL client builds its runtime and seeds its trainer the same way (fedseg.flare.client).
        trainers.append(LocalSiteTrainer(open_site_data(spec, cfg), Runtime.for_site(cfg),
                                         seed=seed_from(seed, zlib.crc32(cfg.site.encode()))))
    torch.manual_seed(seed)
    weights = {k: v.clone() for k, v in build_network(spec).state_dict().items()}
    setup = time.perf_counter() - start
    round_s = []
    for r in range(rounds):
        t0 = time.perf_counter()
        updates = []
        for trainer in trainers:
            trainer.evaluate(weights, "validation")
            result = trainer.train(weights, local_epochs, progress=(r / rounds, (r + 1) / rounds))
            updates.append((result.weights, result.n_samples))
        weights = fedavg(updates)
        round_s.append(time.perf_counter() - t0)
    for trainer in trainers:
        trainer.close()
    return {"setup_s": setup, "round_s": round_s, "total_s": time.perf_counter() - start}


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
    return {
        "task": "spleen/tiny", "sites": 2, "local_epochs": 1, "rounds": [r1, r2], "cases": settings.fl_cases,
        "threads": {"simulator": "1 per site, sites in parallel", "local": "1 per site, sites in turn"},
        "simulator": {str(r): s.as_json() for r, s in sim.items()},
        "local": {str(r): v for r, v in local.items()},
        "total_ratio_simulator_over_local": ratio(sim[r2].wall_s, local[r2]["total_s"]),
        "per_round_s": {"simulator": sim_slope, "local": local_slope},
        "fixed_s": {"simulator": sim_fixed, "local": local_fixed},
        "fl_cost_per_round_s": sim_slope - local_slope,
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
        ["FL overhead: NVFlare's cost", f"{result['fl_cost_per_round_s']:.2f} s/round",
         f"fixed {result['fl_startup_cost_s']:.1f} s", ""],
    ]
