"""Sim-to-real: the tiny model trained on phantoms only, scored on every real labelled CT the repository holds.

Two training schedules:

* ``suite`` (default): what the test suite trains (``tests/conftest.py``): 10 phantoms (seed 1),
  one site split 6/2/2, 240 iterations on the 6 training cases, 2 threads; the phantom figure is the
  held-out Dice on the 4 validation and test cases, as ``tests/test_engine.py`` scores it.
* ``demo``: the demo's data and passes (``fedseg simulate --task spleen --sites 2``: 30 phantoms,
  seed 0, 2 sites, 20 rounds x 6 local epochs), the two sites' training cases pooled and trained for
  the same 120 epochs in one process (cosine over the whole run); phantom figure: the pooled test cases.

The final model (never selected on a real scan) is then scored on the real scans (see
:func:`real_scans`): Dice on the scan's own grid (the mask ``fedseg infer`` writes, against the
label file) and on the network's grid (fedseg's metric), or, where the label is another structure
(the aorta), the share of it the model calls spleen or liver (a false-positive check).

Usage::

    python -m bench.sim_to_real --seeds 0 1 2                         # suite schedule, default phase mix
    python -m bench.sim_to_real --schedule demo --seeds 0 1 2         # the demo's schedule (slow on CPU)
    python -m bench.sim_to_real --phases non-contrast --tag nc        # another phase mix
    python -m bench.sim_to_real --task liver --loss dice --tag dice   # a card setting (deviation re-check)

Results: ``<work>/<tag>/seed<N>/result.json`` per seed and ``<work>/<tag>/summary.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `import bench` work from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_REAL = REPO.parent / "shared" / "data" / "real"


@dataclass(frozen=True)
class Schedule:
    """Phantoms and training passes of one schedule."""

    name: str
    cases: int
    data_seed: int
    split_seed: int
    sites: int
    iterations: int | None = None  # exactly one of iterations and epochs
    epochs: int | None = None
    threads: int = 2


SCHEDULES = {
    "suite": Schedule("suite", cases=10, data_seed=1, split_seed=0, sites=1, iterations=240),
    "demo": Schedule("demo", cases=30, data_seed=0, split_seed=0, sites=2, epochs=20 * 6),
}


@dataclass(frozen=True)
class RealScan:
    """One real scan and what it can measure."""

    name: str
    image: Path
    label: Path
    task: str  # the task whose foreground class the label marks ("spleen" or "liver")
    phase: str
    kind: str = "dice"  # "dice": the label is the class; "false_positive": the label is another structure
    note: str = ""


def real_scans(shared: Path = SHARED_REAL) -> list[RealScan]:
    """Every real labelled CT the repository holds; copies of one file are scored once, missing ones left out.

    ``mr_abdomen`` is MR (a CT model does not apply) and the 3-slice scan's spine and heart masks
    mark structures no task segments, so neither is here.
    """
    tests_real = REPO / "tests" / "data" / "real"
    ts = "TotalSegmentator prediction, not an expert label"
    candidates = []
    for root, where in ((tests_real, "tests/data/real"), (shared, "shared/data/real")):
        for task in ("spleen", "liver"):
            candidates.append(RealScan(f"{where}/ct.nii.gz", root / "ct.nii.gz", root / f"{task}_label.nii.gz", task,
                                       "non-contrast", note=f"{ts}; 30 slices at 3 mm, the {task} cut at both ends"))
        candidates.append(RealScan(f"{where}/dicom_ct_3slice", root / "dicom_ct_3slice" / "reference_ct.nii.gz",
                                   root / "dicom_ct_3slice" / "reference_liver_label.nii.gz", "liver",
                                   "unknown (liver ~45 HU)",
                                   note="rough hand-drawn mask; 3 slices 1 mm apart: thinner than one network voxel"))
    for task in ("spleen", "liver"):
        candidates.append(RealScan("shared/data/real/contrast_ct_aorta", shared / "contrast_ct_aorta" / "ct.nii.gz",
                                   shared / "contrast_ct_aorta" / "aorta_label.nii.gz", task, "arterial",
                                   kind="false_positive", note=f"aorta label only ({ts}): no {task} Dice"))
    seen, scans = set(), []
    for scan in candidates:
        if not (scan.image.is_file() and scan.label.is_file()):
            continue
        key = (scan.task, _digest(scan.image), _digest(scan.label))
        if key not in seen:
            seen.add(key)
            scans.append(scan)
    return scans


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def recipe(task: str, *, loss: str | None = None, lr_schedule: str | None = None, crops: str | None = None,
           levers: dict[str, str] | None = None):
    """The tiny variant of ``task``, with the card's setting where asked (for the deviation re-checks)
    and recipe levers (``fedseg.tasks.spec.LEVERS``, as ``fedseg train --recipe``)."""
    from fedseg.tasks import get_task

    spec = get_task(task, "tiny", levers=levers or None)
    changes: dict = {}
    if loss:
        changes["loss"] = loss
    if lr_schedule:
        changes["lr_schedule"] = lr_schedule
    if crops == "card":  # foreground:background 1:1 instead of per-class ratios
        changes["class_crop_ratios"] = None
    elif crops not in (None, "default"):
        raise ValueError(f"--crops must be default or card, got {crops!r}")
    return replace(spec, **changes) if changes else spec


def phantom_data(root: Path, task: str, schedule: Schedule, phases: str | None, randomise: float | None = None
                 ) -> Path:
    """The schedule's phantoms, split as the suite or the demo splits them (reused when present)."""
    from fedseg.data.split import split_dataset
    from fedseg.data.synth import synthesize

    if not (root / "dataset.json").is_file():
        kwargs = {"phases": phases} if phases else {}
        if randomise is not None:
            kwargs["randomise"] = randomise
        synthesize(task, root, schedule.cases, seed=schedule.data_seed, workers=min(2, os.cpu_count() or 1), **kwargs)
    split_dataset(root, schedule.sites, root / "splits", seed=schedule.split_seed)
    return root


def _items(root: Path, sites: int, splits: tuple[str, ...]) -> list[dict]:
    from fedseg.data.datalist import parse_datalist

    items: list[dict] = []
    for k in range(1, sites + 1):
        datalist, report = parse_datalist(root / "splits" / f"site-{k}.json", root)
        report.raise_if_fatal(str(root / "splits" / f"site-{k}.json"), "benchmark")
        for split in splits:
            items += datalist.items(split)
    return items


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(int(a.sum() + b.sum()), 1))


def score_real(spec, model_path: Path, scans: list[RealScan], runtime) -> list[dict]:
    """Dice (own grid and network grid) or the false-positive share on each real scan of ``spec``'s task."""
    import nibabel as nib

    from fedseg.engine import SegmentationEngine
    from fedseg.errors import DataError
    from fedseg.infer import Predictor

    predictor = Predictor(spec, model_path, runtime)
    engine = SegmentationEngine(spec, runtime)
    engine.set_weights(predictor.engine.get_weights())
    rows = []
    for scan in (s for s in scans if s.task == spec.name):
        row = {"scan": scan.name, "phase": scan.phase, "kind": scan.kind, "note": scan.note}
        try:
            mask = predictor.mask(scan.image) == 1  # class 1: spleen, or liver (tumour, class 2, not counted)
        except DataError as exc:  # e.g. a scan thinner than one voxel of the task's grid
            rows.append({**row, "kind": "not_scored", "reason": str(exc).splitlines()[-1].split(": ", 1)[-1]})
            continue
        label = np.asarray(nib.load(str(scan.label)).dataobj) > 0
        ml = float(np.prod(nib.load(str(scan.image)).header.get_zooms()[:3])) / 1000.0
        row["predicted_ml"] = round(float(mask.sum()) * ml, 1)
        if scan.kind == "dice":
            row["dice_own_grid"] = round(_dice(mask, label), 4)
            row["label_ml"] = round(float(label.sum()) * ml, 1)
            scores = engine.evaluate(engine.eval_data([{"image": str(scan.image), "label": str(scan.label)}]))
            row["dice_network_grid"] = round(float(scores.per_class()[scores.class_names[0]]), 4)
        else:
            row["share_of_label_called_" + spec.name] = round(float(mask[label].mean()), 4)
        rows.append(row)
    return rows


def train_one(spec, root: Path, out: Path, schedule: Schedule, *, seed: int, device: str = "cpu",
              lr_over_run: bool = False) -> tuple[dict, object]:
    """Train on the schedule's training cases; returns (phantom held-out Dice and model path, the runtime).

    The suite schedule trains as the test suite does, at the recipe's base learning rate;
    ``lr_over_run`` makes its rate follow the recipe's schedule over the iterations instead (the
    demo's epochs always do, as ``fedseg train`` runs them)."""
    import torch

    from fedseg.checkpoint import save_model
    from fedseg.engine import Runtime, SegmentationEngine

    torch.set_num_threads(schedule.threads)
    runtime = Runtime.create(device, num_threads=schedule.threads)
    engine = SegmentationEngine(spec, runtime, seed=seed)
    train = engine.train_data(_items(root, schedule.sites, ("training",)))
    start = time.perf_counter()
    if schedule.iterations:
        result = engine.train(train, iterations=schedule.iterations, progress=(0.0, 1.0) if lr_over_run else None)
        losses = [round(result.final_loss, 4)]
    else:
        done, losses, chunk = 0, [], 6
        while done < schedule.epochs:
            n = min(chunk, schedule.epochs - done)
            result = engine.train(train, epochs=n, progress=(done / schedule.epochs, (done + n) / schedule.epochs),
                                  label=f"epoch {done + 1}-{done + n}/{schedule.epochs}")
            done += n
            losses.append(round(result.final_loss, 4))
            print(f"[sim_to_real] seed {seed} epoch {done}/{schedule.epochs} loss {result.final_loss:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    train_s = time.perf_counter() - start
    model = save_model(out / "final_model.pt", engine.get_weights(), spec)
    held_out = ("validation", "test") if schedule.name == "suite" else ("test",)
    scores = engine.evaluate(engine.eval_data(_items(root, schedule.sites, held_out)), label="phantom held-out")
    return {"model": str(model), "train_seconds": round(train_s, 1), "losses": losses,
            "phantom_dice": {k: round(float(v), 4) for k, v in scores.per_class().items()},
            "phantom_cases": scores.n_cases}, runtime


def run_section(settings, work: Path) -> dict:
    """``python -m bench --only sim_to_real``: quick mode the suite schedule with one seed, full the demo's with 3."""
    quick = settings.mode != "full"
    args = argparse.Namespace(task="spleen", schedule="suite" if quick else "demo", seeds=[0] if quick else [0, 1, 2],
                              phases=None, loss=None, lr_schedule=None, crops=None,
                              device="cpu" if quick else settings.device, real=str(SHARED_REAL),
                              work=str(Path(work) / "sim_to_real"), tag=None)
    return run(args)


def rows(summary: dict) -> list[list]:
    """The bench table's rows (comparison, result, detail, note)."""
    return [[f"sim_to_real {r[0]}", r[4], f"{r[2]}, seeds {r[3]}", r[1]] for r in table_rows(summary)]


def run(a: argparse.Namespace) -> dict:
    levers = dict(getattr(a, "recipe", None) or [])
    spec = recipe(a.task, loss=a.loss, lr_schedule=a.lr_schedule, crops=a.crops, levers=levers)
    schedule = SCHEDULES[a.schedule]
    work = Path(a.work).resolve()
    mix = a.phases or "default"
    randomise = getattr(a, "randomise", None)
    data_name = f"{a.task}_{a.schedule}_{mix}" + (f"_rand{randomise:g}" if randomise is not None else "")
    overrides = [f"{k}-{v}" for k, v in (("loss", a.loss), ("lr", a.lr_schedule), ("crops", a.crops)) if v]
    tag = a.tag or "_".join([data_name, *overrides, *(f"{k}-{v}" for k, v in sorted(levers.items()))])
    data = phantom_data(work / "data" / data_name, a.task, schedule, a.phases, randomise)
    scans = real_scans(Path(a.real))
    lr_over_run = bool(a.lr_schedule)  # the suite schedule otherwise keeps the base rate
    runs = []
    for seed in a.seeds:
        out = work / tag / f"seed{seed}"
        out.mkdir(parents=True, exist_ok=True)
        trained, runtime = train_one(spec, data, out, schedule, seed=seed, device=a.device, lr_over_run=lr_over_run)
        trained["real"] = score_real(spec, Path(trained["model"]), scans, runtime)
        trained["seed"] = seed
        (out / "result.json").write_text(json.dumps(trained, indent=2) + "\n")
        print(json.dumps({"seed": seed, "phantom": trained["phantom_dice"], "real": trained["real"]}),
              file=sys.stderr, flush=True)
        runs.append(trained)
    summary = {"task": a.task, "variant": "tiny", "tag": tag, "schedule": schedule.__dict__, "phases": mix,
               "randomise": randomise,
               "recipe": {"loss": spec.loss, "levers": dict(spec.levers),
                          "lr_schedule": spec.lr_schedule if (lr_over_run or schedule.epochs) else "constant (base)",
                          "class_crop_ratios": spec.class_crop_ratios, "pos_neg_ratio": spec.pos_neg_ratio},
               "command": "python -m bench.sim_to_real " + " ".join(sys.argv[1:]), "runs": runs}
    (work / tag / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def table_rows(summary: dict) -> list[list]:
    """One row per real scan and one for the phantoms: the figure of every seed, their mean and spread."""
    rows = []
    task = summary["task"]
    for i, row in enumerate(summary["runs"][0]["real"]):
        if row["kind"] == "not_scored":
            rows.append([row["scan"], row["phase"], "not scored", row["reason"][:80], "n/a"])
            continue
        key = "dice_own_grid" if row["kind"] == "dice" else f"share_of_label_called_{task}"
        values = [r["real"][i][key] for r in summary["runs"]]
        rows.append([row["scan"], row["phase"], key, ", ".join(f"{v:.3f}" for v in values),
                     f"{np.mean(values):.3f} ± {np.std(values):.3f}"])
    phantom = [next(iter(r["phantom_dice"].values())) for r in summary["runs"]]
    rows.append([f"phantoms ({summary['phases']})", "mix", "dice", ", ".join(f"{v:.3f}" for v in phantom),
                 f"{np.mean(phantom):.3f} ± {np.std(phantom):.3f}"])
    return rows


HEAD = ["scan", "phase", "figure", "per seed", "mean ± sd"]


def main(argv: list[str] | None = None) -> int:
    from fedseg.tasks import recipe_lever

    p = argparse.ArgumentParser(prog="python -m bench.sim_to_real", description=__doc__.splitlines()[0])
    p.add_argument("--task", default="spleen", choices=("spleen", "liver"))
    p.add_argument("--schedule", default="suite", choices=sorted(SCHEDULES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds (default: %(default)s)")
    p.add_argument("--phases", default=None, help="phase mix, as fedseg data synth --phases (default: its own)")
    p.add_argument("--randomise", type=float, default=None,
                   help="share of phantoms whose tissue HUs are drawn at random (domain randomisation)")
    p.add_argument("--loss", default=None, choices=("dice", "dicece"), help="override the task's loss")
    p.add_argument("--lr-schedule", default=None, choices=("constant", "cosine"),
                   help="the learning rate over the run (default: the suite schedule keeps the base rate, as the "
                        "test suite trains; the demo schedule follows the task's, cosine)")
    p.add_argument("--crops", default=None, choices=("default", "card"),
                   help="card: foreground:background 1:1 crops instead of the task's class ratios")
    p.add_argument("--recipe", action="append", default=None, type=recipe_lever, metavar="NAME=CHOICE",
                   help="a recipe lever, as fedseg train --recipe (e.g. augment=scanner); repeatable")
    p.add_argument("--device", default="cpu")
    p.add_argument("--real", default=str(SHARED_REAL), help="folder of the shared real scans")
    p.add_argument("--work", default="runs/sim_to_real")
    p.add_argument("--tag", default=None, help="sub-folder of --work for this configuration")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    os.environ.setdefault("TQDM_DISABLE", "1")
    from bench.common import markdown_table

    print(markdown_table(HEAD, table_rows(run(a))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
