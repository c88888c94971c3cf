"""Scale: the simulator with more sites (seconds per round, server memory).

Each run is fedseg's FedAvg job, 2 rounds x 1 local epoch, on tiny data (``scale_cases_per_site``
phantoms per site), so that a round measures NVFlare's per-site work more than training. A site
count the FL-overhead comparison already ran with the same data per site is taken from there.
Round 0 includes starting the site processes (their imports, data check and caching), so the
last round is reported too, as the steady per-round time. Sites run as parallel processes with 1
torch thread each; beyond the machine's cores they share them, so the round time also grows with
the sites' training.
"""

from __future__ import annotations

from pathlib import Path

from bench.common import Settings, synth_dataset
from bench.flsim import run_job

ROUNDS = 2


def run(settings: Settings, work: Path, reuse: dict | None = None) -> dict:
    """One simulator run per site count; ``reuse`` maps (sites, cases per site) to a finished run of
    at least 2 rounds (the FL-overhead comparison's) that then stands in for that site count."""
    runs = []
    for n in settings.scale_sites:
        cases = n * settings.scale_cases_per_site
        sim = (reuse or {}).get((n, settings.scale_cases_per_site))
        if sim is None:
            data = synth_dataset(work / "scale" / f"spleen_{cases}", cases)
            sim = run_job(work / "scale" / f"sites_{n}", data, sites=n, rounds=ROUNDS, local_epochs=1, cases=cases)
        t = sim.timeline
        rounds = t.get("round_s") or [float("nan")] * ROUNDS
        runs.append({"sites": n, "cases": cases, "rounds": sim.rounds, "run_dir": sim.run_dir,
                     "wall_s": sim.wall_s, "startup_s": t.get("startup_s"),
                     "round0_s": rounds[0], "round_s": rounds[-1], "shutdown_s": t.get("shutdown_s"),
                     "site_work_s": {k: v[-1] for k, v in sim.site_round_s.items() if v}, **sim.memory})
    return {"task": "spleen/tiny", "local_epochs": 1, "cases_per_site": settings.scale_cases_per_site,
            "by_sites": runs}


def rows(result: dict) -> list[list]:
    out = []
    for r in result["by_sites"]:
        client = r["client_peak_rss_mb"]
        out.append([f"scale: {r['sites']} sites", f"{r['round_s']:.1f} s/round (round 0: {r['round0_s']:.1f} s)",
                    f"server peak {r['server_peak_rss_mb']:.0f} MB, client peak {max(client, default=0):.0f} MB",
                    f"start-up {r['startup_s'] or float('nan'):.1f} s, wall {r['wall_s']:.1f} s ({r['rounds']} rounds)"])
    return out
