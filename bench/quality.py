"""Quality with non-IID sites: FedAvg, FedProx, FedOpt vs centralized vs each site alone, on scanner-split data.

The phantoms are split with ``fedseg data split --mode scanner`` (each site's cases rewritten for
its own scanner: intensity offset and gain, noise, slice thickness, field of view). Then, with the
same total epochs (FedAvg: rounds x local epochs; the others: that many epochs):

* FedAvg, FedProx and FedOpt (NVFlare's recipes, jobs from the same generator): fedseg's job in
  the NVFlare simulator with cross-site evaluation, read with
  ``fedseg.flare.simulate.summarize`` (what ``fedseg simulate`` puts in its results.json; the
  command itself always re-splits IID, so the job is run on the scanner sites' YAMLs directly);
* centralized: ``fedseg train --pooled`` on all sites' YAMLs;
* each site alone: ``fedseg train --site-config``. Its results.json scores the site's own test
  cases; the other sites' test cases are scored here with the engine on its ``final_model.pt``.

Every model is the final one (last round or epoch); Dice per class on every site's test cases.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.common import Settings, resolve_device, synth_dataset
from bench.flsim import run_job


def _fedseg(*args: str) -> None:
    """Run a fedseg command as a user would (its own process); fail loudly with its output."""
    cmd = [sys.executable, "-m", "fedseg.cli", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def _final_scores(results_json: Path) -> dict[str, dict]:
    body = json.loads(Path(results_json).read_text())
    return body["models"]["final"]


def _score_elsewhere(spec, model_path: Path, configs: dict[str, Path], sites: list[str], device: str,
                     threads: int) -> dict[str, dict]:
    """Score a model file on the named sites' test cases with the engine (as ``fedseg train`` scores its own)."""
    from fedseg.checkpoint import load_model
    from fedseg.engine import Runtime, SegmentationEngine
    from fedseg.results import SiteScore
    from fedseg.site_config import load_site_config
    from fedseg.site_data import open_site_data

    weights = load_model(model_path, spec)
    out = {}
    for site in sites:
        data = open_site_data(spec, load_site_config(configs[site]))
        engine = SegmentationEngine(spec, Runtime.create(device, num_threads=threads), class_names=data.class_names)
        out[site] = SiteScore.from_scores(engine.evaluate(engine.eval_data(data.items("test")), weights=weights)).to_json()
    return out


def run(settings: Settings, work: Path) -> dict:
    from fedseg.data.msd import read_dataset_info
    from fedseg.flare.simulate import summarize
    from fedseg.results import models_to_json
    from fedseg.site_config import write_site_config
    from fedseg.tasks import get_task

    root = Path(work) / "quality"
    n, rounds, local_epochs = settings.quality_sites, settings.quality_rounds, settings.quality_local_epochs
    epochs = rounds * local_epochs
    device = resolve_device(settings.device)
    source = synth_dataset(root / "spleen", n * settings.quality_cases_per_site)
    scanner = root / "scanner"
    _fedseg("data", "split", "--dataset", str(source), "--sites", str(n), "--out", str(scanner), "--mode", "scanner",
            "--seed", "0")
    profiles = json.loads((scanner / "scanners.json").read_text())["sites"]
    names = [f"site-{k}" for k in range(1, n + 1)]
    configs = {s: write_site_config(root / "site_configs" / f"{s}.yaml", s, {"spleen": (scanner, scanner / f"{s}.json")},
                                    device=device, num_threads=1, cache_rate=1.0, num_workers=0) for s in names}
    common = ["--task", "spleen", "--variant", settings.variant, "--epochs", str(epochs), "--val-every", str(epochs),
              "--threads", str(settings.threads)]
    table, fl_wall = {}, {}
    for algorithm, label in (("fedavg", "FedAvg"), ("fedprox", "FedProx"), ("fedopt", "FedOpt")):
        sim = run_job(root / algorithm, scanner, sites=n, rounds=rounds, local_epochs=local_epochs, cases=0,
                      cross_site=True, variant=settings.variant, config_dir=root / "site_configs", algorithm=algorithm)
        _, models = summarize(Path(sim.run_dir) / "workspace", read_dataset_info(scanner).foreground_labels)
        table[label] = models_to_json({"final": models["final"]})["final"]
        fl_wall[label] = sim.wall_s
    _fedseg("train", *common, "--pooled", *map(str, configs.values()), "--out", str(root / "pooled"))
    table["centralized"] = _final_scores(root / "pooled" / "results.json")
    spec = get_task("spleen", settings.variant)
    for site in names:
        out = root / f"alone_{site}"
        _fedseg("train", *common, "--site-config", str(configs[site]), "--out", str(out))
        scores = _final_scores(out / "results.json")
        scores.update(_score_elsewhere(spec, out / "final_model.pt", configs, [s for s in names if s != site],
                                       device, settings.threads))
        table[f"{site} alone"] = scores
    return {"task": f"spleen/{settings.variant}", "sites": n, "cases_per_site": settings.quality_cases_per_site,
            "fedavg": f"{rounds} rounds x {local_epochs} local epochs", "epochs": epochs, "scanners": profiles,
            "fl_wall_s": fl_wall, "final_model_dice": table}


def rows(result: dict) -> list[list]:
    out = []
    for method, by_site in result["final_model_dice"].items():
        cells = ", ".join(f"{s} {v['dice'].get('spleen') if v['dice'].get('spleen') is not None else float('nan'):.3f}"
                          for s, v in sorted(by_site.items()) if s != "pooled")
        mean = [v["dice"]["spleen"] for s, v in by_site.items() if s != "pooled" and v["dice"].get("spleen") is not None]
        out.append([f"quality (scanner sites): {method}", f"spleen Dice mean {sum(mean) / max(len(mean), 1):.3f}",
                    cells, f"{result['epochs']} epochs"])
    return out
