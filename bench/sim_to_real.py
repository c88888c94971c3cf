"""Sim-to-real: a model trained on phantoms only, scored on every real labelled scan the repository holds.

The demo trains the tiny spleen model federated (``fedseg simulate --task spleen --sites 2``: 30
phantoms, 2 sites, 20 rounds x 6 local epochs). Here the same phantoms, split the same way, are
pooled and trained for the same 120 epochs in one process: the same data, schedule (cosine over the
whole run) and number of passes over every training case, without NVFlare's start-up and two site
processes competing for 2 CPU cores. The final model (no selection on any real scan) is then scored on

* ``tests/data/real/ct.nii.gz``: spleen and liver labels, non-contrast (TotalSegmentator masks);
* ``../shared/data/real/dicom_ct_3slice/reference_ct.nii.gz``: a liver label (3 slices, rough);
* ``../shared/data/real/contrast_ct_aorta/ct.nii.gz``: arterial phase, aorta label only: no Dice,
  but the share of the aorta the model calls spleen (or liver) is a false-positive check;

(``mr_abdomen`` is MR: a CT model does not apply). Dice is reported on the scan's own grid (the mask
``fedseg infer`` writes against the label file) and on the network's grid (``fedseg``'s metric).

Usage::

    python -m bench.sim_to_real --task spleen --seeds 0 1                       # the demo's recipe
    python -m bench.sim_to_real --task liver --seeds 0 1 --loss dice            # a card setting
    python -m bench.sim_to_real --phases portal-venous=1 --tag pv_only          # another phase mix

Results: ``<work>/<tag>/seed<N>/result.json`` per seed and ``<work>/<tag>/summary.json``.
"""

from __future__ import annotations

import argparse
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
DEMO_ROUNDS, DEMO_LOCAL_EPOCHS, DEMO_CASES, DEMO_SITES = 20, 6, 30, 2


@dataclass(frozen=True)
class RealScan:
    """One real scan and what it can measure."""

    name: str
    image: Path
    label: Path
    task: str  # the task whose foreground class the label marks ("spleen" or "liver")
    phase: str
    kind: str = "dice"  # "dice": the label is the class; "false_positive": the label is another structure


def real_scans(shared: Path = SHARED_REAL) -> list[RealScan]:
    """Every real labelled CT the repository holds (scans in a missing folder are left out)."""
    tests_real = REPO / "tests" / "data" / "real"
    scans = [
        RealScan("tests/data/real/ct.nii.gz", tests_real / "ct.nii.gz", tests_real / "spleen_label.nii.gz",
                 "spleen", "non-contrast"),
        RealScan("tests/data/real/ct.nii.gz", tests_real / "ct.nii.gz", tests_real / "liver_label.nii.gz",
                 "liver", "non-contrast"),
        RealScan("dicom_ct_3slice (3 slices, rough label)", shared / "dicom_ct_3slice" / "reference_ct.nii.gz",
                 shared / "dicom_ct_3slice" / "reference_liver_label.nii.gz", "liver", "non-contrast (liver ~45 HU)"),
    ]
    for task in ("spleen", "liver"):
        scans.append(RealScan("contrast_ct_aorta (aorta label only)", shared / "contrast_ct_aorta" / "ct.nii.gz",
                              shared / "contrast_ct_aorta" / "aorta_label.nii.gz", task, "arterial",
                              kind="false_positive"))
    return [s for s in scans if s.image.is_file() and s.label.is_file()]


def recipe(task: str, *, loss: str | None = None, lr_schedule: str | None = None, crops: str | None = None):
    """The tiny variant of ``task``, with the card's setting where asked (for the deviation re-checks)."""
    from fedseg.tasks import get_task

    spec = get_task(task, "tiny")
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


def demo_data(root: Path, task: str, cases: int, seed: int, phases: str | None) -> Path:
    """Phantoms as the demo makes them (``fedseg simulate``: synthesize, then split over 2 sites, same seed)."""
    from fedseg.data.split import split_dataset
    from fedseg.data.synth import synthesize

    if not (root / "dataset.json").is_file():
        kwargs = {"phases": phases} if phases else {}
        synthesize(task, root, cases, seed=seed, workers=min(2, os.cpu_count() or 1), **kwargs)
    split_dataset(root, DEMO_SITES, root / "splits", seed=seed)
    return root


def _items(root: Path, split: str) -> list[dict]:
    from fedseg.data.datalist import parse_datalist

    items: list[dict] = []
    for k in range(1, DEMO_SITES + 1):
        datalist, report = parse_datalist(root / "splits" / f"site-{k}.json", root)
        report.raise_if_fatal(str(root / "splits" / f"site-{k}.json"), "benchmark")
        items += datalist.items(split)
    return items


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(int(a.sum() + b.sum()), 1))


def score_real(spec, model_path: Path, scans: list[RealScan], threads: int) -> list[dict]:
    """Dice (own grid and network grid) or the false-positive share on each real scan of ``spec``'s task."""
    import nibabel as nib

    from fedseg.engine import Runtime, SegmentationEngine
    from fedseg.infer import Predictor

    runtime = Runtime.create("cpu", num_threads=threads)
    predictor = Predictor(spec, model_path, runtime)
    engine = SegmentationEngine(spec, runtime)
    engine.set_weights(predictor.engine.get_weights())
    rows = []
    for scan in (s for s in scans if s.task == spec.name):
        mask = predictor.mask(scan.image) == 1  # class 1: spleen, or liver (tumour, class 2, not counted)
        label = np.asarray(nib.load(str(scan.label)).dataobj) > 0
        zooms = nib.load(str(scan.image)).header.get_zooms()[:3]
        ml = float(np.prod(zooms)) / 1000.0
        row = {"scan": scan.name, "phase": scan.phase, "kind": scan.kind, "predicted_ml": round(mask.sum() * ml, 1)}
        if scan.kind == "dice":
            row["dice_own_grid"] = round(_dice(mask, label), 4)
            row["label_ml"] = round(label.sum() * ml, 1)
            scores = engine.evaluate(engine.eval_data([{"image": str(scan.image), "label": str(scan.label)}]))
            row["dice_network_grid"] = round(float(list(scores.per_class().values())[0]), 4)
        else:
            row["share_of_label_called_" + spec.name] = round(float(mask[label].mean()), 4)
        rows.append(row)
    return rows


def train_one(spec, root: Path, out: Path, *, seed: int, epochs: int, threads: int, chunk: int) -> dict:
    """Pooled training on the demo's training cases; returns the phantom test Dice and the model path."""
    from fedseg.checkpoint import save_model
    from fedseg.engine import Runtime, SegmentationEngine

    runtime = Runtime.create("cpu", num_threads=threads)
    engine = SegmentationEngine(spec, runtime, seed=seed)
    train = engine.train_data(_items(root, "training"))
    start, done, losses = time.perf_counter(), 0, []
    while done < epochs:
        n = min(chunk, epochs - done)
        result = engine.train(train, epochs=n, progress=(done / epochs, (done + n) / epochs),
                              label=f"epoch {done + 1}-{done + n}/{epochs}")
        done += n
        losses.append(round(result.final_loss, 4))
        print(f"[sim_to_real] seed {seed} epoch {done}/{epochs} loss {result.final_loss:.4f} "
              f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    train_s = time.perf_counter() - start
    model = save_model(out / "final_model.pt", engine.get_weights(), spec, epoch=done)
    test = engine.evaluate(engine.eval_data(_items(root, "test")), label="phantom test")
    return {"model": str(model), "train_seconds": round(train_s, 1), "losses": losses,
            "phantom_test_dice": [round(float(v), 4) for v in test.per_class().values()],
            "phantom_test_cases": test.n_cases}


def run(a: argparse.Namespace) -> dict:
    spec = recipe(a.task, loss=a.loss, lr_schedule=a.lr_schedule, crops=a.crops)
    work = Path(a.work).resolve()
    tag = a.tag or f"{a.task}_{a.phases or 'default'}"
    data = demo_data(work / "data" / f"{a.task}_{a.phases or 'default'}_{a.cases}_{a.data_seed}", a.task,
                     a.cases, a.data_seed, a.phases)
    scans = real_scans(Path(a.real))
    runs = []
    for seed in a.seeds:
        out = work / tag / f"seed{seed}"
        out.mkdir(parents=True, exist_ok=True)
        trained = train_one(spec, data, out, seed=seed, epochs=a.epochs, threads=a.threads, chunk=a.chunk)
        trained["real"] = score_real(spec, Path(trained["model"]), scans, a.threads)
        trained["seed"] = seed
        (out / "result.json").write_text(json.dumps(trained, indent=2) + "\n")
        print(json.dumps(trained["real"]), file=sys.stderr, flush=True)
        runs.append(trained)
    summary = {"task": a.task, "variant": "tiny", "tag": tag, "phases": a.phases or "default",
               "recipe": {"loss": spec.loss, "lr_schedule": spec.lr_schedule,
                          "class_crop_ratios": spec.class_crop_ratios, "pos_neg_ratio": spec.pos_neg_ratio},
               "cases": a.cases, "data_seed": a.data_seed, "epochs": a.epochs, "threads": a.threads,
               "command": "python -m bench.sim_to_real " + " ".join(sys.argv[1:]), "runs": runs}
    (work / tag / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def table(summary: dict) -> str:
    """One Markdown row per real scan: the figure of every seed and their mean."""
    from bench.common import markdown_table

    rows = []
    first = summary["runs"][0]["real"]
    for i, row in enumerate(first):
        key = "dice_own_grid" if row["kind"] == "dice" else f"share_of_label_called_{summary['task']}"
        values = [r["real"][i][key] for r in summary["runs"]]
        rows.append([row["scan"], row["phase"], key, ", ".join(f"{v:.3f}" for v in values), float(np.mean(values))])
    phantom = [r["phantom_test_dice"][0] for r in summary["runs"]]
    rows.append(["phantom test cases", "mix", "dice", ", ".join(f"{v:.3f}" for v in phantom), float(np.mean(phantom))])
    return markdown_table(["scan", "phase", "figure", "per seed", "mean"], rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sim_to_real", description=__doc__.splitlines()[0])
    p.add_argument("--task", default="spleen", choices=("spleen", "liver"))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="training seeds (default: %(default)s)")
    p.add_argument("--cases", type=int, default=DEMO_CASES)
    p.add_argument("--data-seed", type=int, default=0, help="phantom and split seed (the demo's: 0)")
    p.add_argument("--epochs", type=int, default=DEMO_ROUNDS * DEMO_LOCAL_EPOCHS,
                   help="pooled epochs (default: the demo's rounds x local epochs, %(default)s)")
    p.add_argument("--phases", default=None, help="phase mix for fedseg data synth --phases (default: its own)")
    p.add_argument("--loss", default=None, choices=("dice", "dicece"), help="override the task's loss")
    p.add_argument("--lr-schedule", default=None, choices=("constant", "cosine"))
    p.add_argument("--crops", default=None, choices=("default", "card"),
                   help="card: foreground:background 1:1 crops instead of the task's class ratios")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chunk", type=int, default=DEMO_LOCAL_EPOCHS, help="epochs between progress lines")
    p.add_argument("--real", default=str(SHARED_REAL), help="folder of the shared real scans")
    p.add_argument("--work", default="runs/sim_to_real")
    p.add_argument("--tag", default=None, help="sub-folder of --work for this configuration")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    os.environ.setdefault("TQDM_DISABLE", "1")
    summary = run(a)
    print(table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
