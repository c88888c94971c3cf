"""The ``fedseg`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from fedseg.errors import CheckpointError, FedsegError
from fedseg.tasks import VARIANTS, get_task, task_names

ALGORITHMS = ("fedavg", "fedprox", "fedopt")  # fedseg.flare.jobs.ALGORITHMS, without importing nvflare here

log = logging.getLogger("fedseg")


def _task_args(p: argparse.ArgumentParser, variant_default: str | None = "full") -> None:
    p.add_argument("--task", required=True, choices=task_names())
    p.add_argument("--variant", default=variant_default, choices=VARIANTS,
                   help="full: the card's recipe; tiny: small patches and channels for CPU")


def _runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="override the site's device (auto, cpu, cuda, cuda:N)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the site's num_threads)")


# data -------------------------------------------------------------------------------------------
def cmd_data_synth(a) -> int:
    from fedseg.data.synth import synthesize

    info = synthesize(a.task, Path(a.out), a.cases, seed=a.seed, workers=a.workers)
    print(f"wrote {info.num_training} {a.task} phantoms to {a.out} (labels: {', '.join(info.labels)})")
    return 0


def cmd_data_split(a) -> int:
    from fedseg.data.split import split_dataset

    shares = [float(x) for x in a.shares.split(",")] if a.shares else None
    if a.mode == "scanner":
        from fedseg.data.scanner import scanner_split

        written = scanner_split(Path(a.dataset), a.sites, Path(a.out), seed=a.seed, shares=shares)
    else:
        written = split_dataset(Path(a.dataset), a.sites, Path(a.out), seed=a.seed, shares=shares)
    for name, path in written.items():
        print(f"{name}: {path}")
    if a.mode == "scanner":
        print(f"rewritten cases, dataset.json and scanners.json (each site's profile) are in {a.out}: "
              f"use it as the sites' data_root")
    return 0


def cmd_data_check(a) -> int:
    from fedseg.data.checks import check_data
    from fedseg.data.policy import CheckPolicy
    from fedseg.site_config import load_site_config

    spec = get_task(a.task, a.variant)
    site = load_site_config(Path(a.site_config))
    task_data = site.task_data(spec.name)
    _, _, report = check_data(spec, task_data.data_root, task_data.datalist,
                              policy=CheckPolicy.for_site(site, spec.name))
    if report.problems:
        print(report.render())
    print(f"site {site.site}, task {spec.name}: {report.summary()}")
    return 1 if report.fatal else 0


def cmd_data_deepgrow_2d(a) -> int:
    from fedseg.deepgrow.prepare import prepare_dataset

    spec = get_task("deepgrow2d", a.variant)
    prepared = prepare_dataset(spec, Path(a.dataset), Path(a.out))
    counts = ", ".join(f"{k} {v}" for k, v in sorted(prepared.per_object().items()))
    print(f"wrote {len(prepared.items)} 2D samples at {spec.spacing[0]:g} x {spec.spacing[1]:g} mm to {a.out} "
          f"({counts}; {prepared.dropped_small} object slices under {spec.interaction.min_area_mm2:g} mm^2 left out); "
          f"list: {Path(a.out) / 'datalist.json'}")
    return 0


def cmd_data_import_dicom(a) -> int:
    from fedseg.data.dicom_import import import_dicom

    classes = tuple(c.strip() for c in a.classes.split(",") if c.strip()) if a.classes else None
    result = import_dicom(Path(a.src), Path(a.out), labels=Path(a.labels) if a.labels else None, classes=classes,
                          modality=a.modality, name=a.name)
    if result.report.problems:
        print(result.report.render())
    print(result.summary())
    if result.manifest is None:
        return 1
    print(f"site-local manifest (patient and series identifiers; never leaves the site): {result.manifest}")
    return 0


def _click(text: str) -> tuple[int, int]:
    try:
        x, y = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a click is two whole voxel indices x,y (e.g. 60,48), got {text!r}") from None
    return x, y


def cmd_annotate(a) -> int:
    from fedseg.deepgrow.annotate import Annotator
    from fedseg.engine import Runtime

    variant = a.variant or detect_variant("deepgrow2d", Path(a.model))
    annotator = Annotator(get_task("deepgrow2d", variant), Path(a.model),
                          Runtime.create(a.device or "auto", num_threads=a.threads))
    out = annotator.annotate(Path(a.image), a.slice, a.fg, a.bg or [], Path(a.out))
    print(f"wrote {out}")
    return 0


# train / infer ----------------------------------------------------------------------------------
def cmd_train(a) -> int:
    from fedseg.engine import Runtime
    from fedseg.runners.local import run_local
    from fedseg.site_config import load_site_config

    spec = get_task(a.task, a.variant, a.optimizer)
    paths = a.pooled or ([a.site_config] if a.site_config else [])
    if not paths:
        raise FedsegError("give --site-config SITE.yaml (one site) or --pooled SITE.yaml ... (centralized)")
    sites = [load_site_config(Path(p)) for p in paths]
    mode = "pooled" if a.pooled else sites[0].site
    out = Path(a.out or f"runs/{spec.name}_{mode}")
    if a.backend == "ray":
        from fedseg.ray.runner import run_ray

        result = run_ray(spec, sites, out, epochs=a.epochs, val_every=a.val_every, seed=a.seed, workers=a.workers,
                         gpus_per_worker=a.gpus_per_worker, address=a.address, resume=a.resume)
    else:
        runtime = Runtime.for_site(sites[0], device=a.device, num_threads=a.threads)
        result = run_local(spec, sites, out, epochs=a.epochs, val_every=a.val_every, seed=a.seed, runtime=runtime)
    print(result.table())
    print(f"best validation Dice {result.best_val_dice:.4f} at epoch {result.best_epoch}; "
          f"wall time {result.wall_time_s:.0f} s; results in {out / 'results.json'}")
    return 0


def detect_variant(task: str, model: Path) -> str:
    """The variant a model file fits: recorded in fedseg files, found by shape for others."""
    from fedseg.checkpoint import load_model, model_variant

    recorded = model_variant(model)
    if recorded:
        return recorded
    for variant in VARIANTS:
        try:
            load_model(model, get_task(task, variant))
            return variant
        except CheckpointError:
            continue
    raise CheckpointError(f"{model}: fits neither variant of task {task!r} ({', '.join(VARIANTS)})")


def cmd_infer(a) -> int:
    from fedseg.engine import Runtime
    from fedseg.infer import Predictor

    variant = a.variant or detect_variant(a.task, Path(a.model))
    spec = get_task(a.task, variant)
    predictor = Predictor(spec, Path(a.model), Runtime.create(a.device or "auto", num_threads=a.threads))
    if Path(a.image).is_dir():
        from fedseg.infer_dicom import segment_series

        print(f"wrote {', '.join(str(p) for p in segment_series(predictor, Path(a.image), Path(a.out)))}")
        return 0
    if Path(a.out).suffix.lower() == ".dcm":
        raise FedsegError(f"{a.out}: a DICOM SEG needs a DICOM series folder as --image (got the file {a.image})")
    out = predictor.segment(Path(a.image), Path(a.out))
    print(f"wrote {out}")
    return 0


# jobs / simulate --------------------------------------------------------------------------------
def cmd_jobs_export(a) -> int:
    from fedseg.flare.jobs import COMMITTED, export_job, job_for, resumed

    overrides = dict(variant=a.variant, num_rounds=a.rounds, local_epochs=a.local_epochs, min_clients=a.min_clients,
                     privacy=a.privacy, gpus=a.gpus, site_gpus=_site_gpus(a.site_gpus), **_deadline_overrides(a))
    if a.task:
        jobs = (job_for(a.task, a.algorithm or "fedavg").with_overrides(**overrides),)
    else:
        jobs = tuple(j.with_overrides(**overrides) for j in COMMITTED)
    if a.resume_from:
        if len(jobs) != 1:
            raise FedsegError("--resume-from needs --task: it resumes one job")
        jobs = (resumed(jobs[0], Path(a.resume_from), a.server_path),)
    for job in jobs:
        print(f"exported {export_job(job, Path(a.out), bundle_code=a.bundle_code)}")
    return 0


def cmd_jobs_allow_list(a) -> int:
    from fedseg.flare.allow_list import allow_classes, committed_job_classes, required_classes

    classes = required_classes([Path(j) for j in a.job]) if a.job else committed_job_classes()
    if a.local_dir:
        print(f"allowed {len(classes)} class(es) in {allow_classes(Path(a.local_dir), classes)}")
    else:
        print("\n".join(classes))
    return 0


def _deadline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--round-timeout", type=int, default=None, metavar="S",
                   help="every training round ends after S seconds at the latest (default: the variant's, see README)")
    p.add_argument("--straggler-grace", type=int, default=None, metavar="S",
                   help="once min-clients updates are in, wait at most S more seconds for the rest")
    p.add_argument("--heartbeat-timeout", type=int, default=None, metavar="S",
                   help="a site silent for S seconds is treated as lost until it beats again")


def _deadline_overrides(a) -> dict:
    return dict(round_timeout=a.round_timeout, straggler_grace=a.straggler_grace,
                heartbeat_timeout=a.heartbeat_timeout)


def _site_gpus(values: list[str] | None) -> tuple[tuple[str, int], ...] | None:
    if not values:
        return None
    pairs = []
    for value in values:
        site, _, count = value.partition("=")
        if not site or not count.isdigit():
            raise FedsegError(f"--site-gpus takes SITE=N (e.g. site-3=2), got {value!r}")
        pairs.append((site, int(count)))
    return tuple(pairs)


def cmd_simulate(a) -> int:
    from fedseg.flare.jobs import committed_job, job_for
    from fedseg.flare.simulate import resume_run, simulate

    if a.resume:
        result = resume_run(Path(a.resume))
        return _print_simulation(result.results.job_dir.name, result, Path(a.resume) / "resumed")
    job_dir = None
    if a.job:
        job_dir = Path(a.job)
        meta = job_dir / "meta.json"
        if not meta.is_file():
            raise FedsegError(f"{job_dir}: not a job folder (no meta.json)")
        job = committed_job(json.loads(meta.read_text())["name"])
    else:
        job = job_for(a.task or "spleen", a.algorithm)
    overridden = job.with_overrides(num_rounds=a.rounds, local_epochs=a.local_epochs,
                                    min_clients=a.min_clients or min(2, a.sites), privacy=a.privacy,
                                    **_deadline_overrides(a))
    if overridden != job:
        job, job_dir = overridden, None  # re-export with the overrides instead of editing the folder
    data_dir = Path(a.data or f"data/{job.task}")
    run_dir = Path(a.run_dir or f"runs/{job.name}")
    result = simulate(job, n_sites=a.sites, data_dir=data_dir, run_dir=run_dir, cases=a.cases, seed=a.seed,
                      job_dir=job_dir)
    return _print_simulation(f"{job.name}: {a.sites} sites, {job.num_rounds} rounds x {job.local_epochs} local "
                             f"epochs ({job.variant} variant)", result, run_dir)


def _print_simulation(title: str, result, run_dir: Path) -> int:
    """Print the run's table and what went wrong; exit status 1 when training stopped before its last round."""
    print()
    print(f"{title}; Dice on each site's test cases:")
    print(result.table())
    for site, what in sorted(result.results.participation().items()):
        print(f"WARNING: {site}: " + "; ".join(f"{k} round(s) {', '.join(map(str, v))}" for k, v in what.items()))
    if result.failed_sites:
        print(f"WARNING: site(s) {', '.join(result.failed_sites)} failed during the run; see {run_dir / 'simulator.log'}")
    if not result.results.finished:
        print(f"ERROR: training stopped before its last round: {result.results.ended.get('message')}")
    print(f"best round: {result.best_round}; wall time {result.wall_time_s:.0f} s "
          f"(simulator {result.simulator_time_s:.0f} s); results in {run_dir / 'results.json'}; "
          f"report and plots in {run_dir / 'report.md'}, {run_dir / 'validation_dice.png'}")
    return 0 if result.results.finished else 1


def cmd_report(a) -> int:
    from fedseg.flare.report import write_report

    report, out = write_report(Path(a.path), Path(a.out) if a.out else None,
                               [Path(c) for c in a.compare] if a.compare else None)
    print(report.markdown())
    print(f"\nwrote {out / 'report.md'}, {out / 'report.json'}, {out / 'training_loss.png'}, "
          f"{out / 'validation_dice.png'}")
    return 0


def cmd_poc(a) -> int:
    from fedseg.flare.jobs import export_job, job_for
    from fedseg.flare.poc import ServerLost, resume_poc, run_poc
    from fedseg.results import render_table

    job = job_for(a.task).with_overrides(num_rounds=a.rounds, local_epochs=a.local_epochs,
                                         min_clients=a.min_clients or min(2, a.sites), **_deadline_overrides(a))
    run_dir = Path(a.resume or a.run_dir or f"runs/{job.name}_poc")
    try:
        if a.resume:
            run = resume_poc(run_dir)
        else:
            job_dir = export_job(job, run_dir / "job", bundle_code=a.bundle_code)
            run = run_poc(job, job_dir, n_sites=a.sites, data_dir=Path(a.data or f"data/{job.task}"), run_dir=run_dir,
                          cases=a.cases, seed=a.seed, via=a.via)
    except ServerLost as lost:
        print(f"ERROR: {lost}")
        return 1
    print(f"\njob {run.job_id}: {run.status}; Dice on each site's test cases:")
    print(render_table(run.models, tuple(json.loads((run_dir / 'results.json').read_text())["classes"])))
    print(f"result downloaded to {run.result_dir}; report in {run_dir / 'report.md'}; wall time {run.wall_time_s:.0f} s")
    if not run.results.finished:
        print(f"ERROR: training stopped before its last round: {run.results.ended.get('message')}")
    return 0 if run.status == "FINISHED:COMPLETED" and run.results.finished else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedseg", description="Federated 3D segmentation on NVFlare and MONAI")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="phantoms, splits and checks").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="write an MSD-layout dataset of synthetic phantoms")
    p.add_argument("--task", required=True, choices=task_names())
    p.add_argument("--out", required=True)
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes drawing phantoms in parallel")
    p.set_defaults(func=cmd_data_synth)
    p = data.add_parser("split", help="write one Decathlon datalist per site and a pooled site-All list")
    p.add_argument("--dataset", required=True, help="dataset root holding dataset.json")
    p.add_argument("--sites", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shares", default=None, help="relative site sizes, e.g. 1,2 (default: equal)")
    p.add_argument("--mode", choices=("iid", "scanner"), default="iid",
                   help="iid: lists only; scanner: also rewrite each site's cases for its own scanner (intensity "
                        "offset and gain, noise, slice thickness, field of view) into --out, the sites' data root")
    p.set_defaults(func=cmd_data_split)
    p = data.add_parser("deepgrow-2d", help="2D Deepgrow samples (one per slice and object) from an MSD dataset")
    p.add_argument("--dataset", required=True, help="dataset root holding dataset.json, multi-organ labels")
    p.add_argument("--out", required=True)
    p.add_argument("--variant", default="full", choices=VARIANTS, help="full: 1 x 1 mm pixels; tiny: 3 x 3 mm")
    p.set_defaults(func=cmd_data_deepgrow_2d)
    p = data.add_parser("import-dicom", help="DICOM series (and SEG or NIfTI/NRRD labels) into an MSD-layout dataset")
    p.add_argument("--src", required=True, help="folder tree of DICOM files (any layout; grouped by series)")
    p.add_argument("--out", required=True, help="new dataset folder (dataset.json, imagesTr, labelsTr, imagesTs)")
    p.add_argument("--labels", default=None, help="folder of DICOM SEG files and/or NIfTI/NRRD masks on the series' grid")
    p.add_argument("--classes", default=None,
                   help="foreground class names in label-value order, e.g. liver,tumour (default: the SEG's segments)")
    p.add_argument("--modality", default=None, help="import only this modality (default: the most common one)")
    p.add_argument("--name", default="dicom_import", help="dataset name in dataset.json")
    p.set_defaults(func=cmd_data_import_dicom)
    p = data.add_parser("check", help="check every file a site lists for a task; all problems at once")
    _task_args(p)
    p.add_argument("--site-config", required=True)
    p.set_defaults(func=cmd_data_check)

    p = sub.add_parser("train", help="train one site alone, or all sites pooled (centralized baseline)")
    _task_args(p)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--site-config", help="the site's YAML (single-site training)")
    group.add_argument("--pooled", nargs="+", metavar="SITE_YAML", help="several sites' YAMLs, training cases pooled")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--val-every", type=int, default=5)
    p.add_argument("--optimizer", default=None, help="one of the task's optimizer choices")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="run folder (default runs/<task>_<site|pooled>)")
    p.add_argument("--backend", choices=("local", "ray"), default="local")
    p.add_argument("--workers", type=int, default=2, help="Ray workers (with --backend ray)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--address", default=None, help="Ray cluster address (ray://host:port or auto)")
    p.add_argument("--resume", default=None, help="continue a stopped Ray run from its run folder")
    _runtime_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("infer", help="segment a volume; the mask is written on the input's grid")
    _task_args(p, variant_default=None)
    p.add_argument("--model", required=True)
    p.add_argument("--image", required=True, help="a NIfTI file, or a folder holding one DICOM series")
    p.add_argument("--out", required=True,
                   help="mask.nii.gz; or, for a DICOM series, mask.dcm: a DICOM SEG plus mask.nii.gz beside it")
    _runtime_args(p)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("annotate", help="Deepgrow 2D: the clicked object's mask on one slice")
    p.add_argument("--model", required=True, help="a deepgrow2d model file")
    p.add_argument("--variant", default=None, choices=VARIANTS, help="default: read from the model file")
    p.add_argument("--image", required=True, help="a 3D CT NIfTI")
    p.add_argument("--slice", type=int, required=True, help="index z along the image's third array axis")
    p.add_argument("--fg", type=_click, action="append", required=True, metavar="X,Y",
                   help="a click inside the object (voxel indices along the first two array axes); repeatable")
    p.add_argument("--bg", type=_click, action="append", metavar="X,Y", help="a click outside the object; repeatable")
    p.add_argument("--out", required=True, help="mask NIfTI: the image's grid, non-zero only on the slice")
    _runtime_args(p)
    p.set_defaults(func=cmd_annotate)

    jobs = sub.add_parser("jobs", help="NVFlare job folders").add_subparsers(dest="jobs_command", required=True)
    p = jobs.add_parser("export", help="(re)generate job folders; with no --task, the committed jobs/")
    p.add_argument("--out", default="jobs")
    p.add_argument("--task", default=None, choices=task_names())
    p.add_argument("--variant", default=None, choices=VARIANTS)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--local-epochs", type=int, default=None)
    p.add_argument("--min-clients", type=int, default=None)
    p.add_argument("--privacy", default=None, choices=("none", "exclude", "percentile"),
                   help="exclude: normalization layers stay at each site; percentile: NVFlare PercentilePrivacy")
    p.add_argument("--algorithm", default=None, choices=ALGORITHMS,
                   help="with --task: NVFlare's FedAvg (default), FedProx or FedOpt recipe")
    p.add_argument("--resume-from", default=None, metavar="FL_GLOBAL_MODEL.pt",
                   help="continue a stopped job from this saved global model, at the round after the one it records")
    p.add_argument("--server-path", default=None, help="where the server sees --resume-from (default: its local path)")
    p.add_argument("--gpus", type=int, default=None, help="GPUs every site must offer (meta.json resource_spec)")
    p.add_argument("--site-gpus", nargs="+", default=None, metavar="SITE=N", help="per-site GPU overrides")
    p.add_argument("--bundle-code", action="store_true",
                   help="ship the fedseg package in app/custom (sites need nvflare, torch, MONAI, not fedseg)")
    _deadline_args(p)
    p.set_defaults(func=cmd_jobs_export)
    p = jobs.add_parser("allow-list", help="the classes a site (and the server) must allow to run fedseg's jobs "
                                           "without granting anyone the BYOC right")
    p.add_argument("--job", nargs="+", default=None, help="job folders (default: every job `jobs export` writes)")
    p.add_argument("--local-dir", default=None,
                   help="add them to DIR/resources.json (a startup kit's local/ folder, or a simulator workspace's)")
    p.set_defaults(func=cmd_jobs_allow_list)

    p = sub.add_parser("simulate", help="synth + split + nvflare simulator + results table")
    p.add_argument("--job", default=None, help="a job folder (default: generated for --task)")
    p.add_argument("--task", default=None, choices=task_names())
    p.add_argument("--sites", type=int, default=2)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--local-epochs", type=int, default=None)
    p.add_argument("--cases", type=int, default=30, help="phantoms to synthesize if the dataset is missing")
    p.add_argument("--data", default=None, help="dataset folder (default data/<task>)")
    p.add_argument("--run-dir", default=None, help="default runs/<job name>")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--privacy", default=None, choices=("none", "exclude", "percentile"))
    p.add_argument("--algorithm", default="fedavg", choices=ALGORITHMS, help="NVFlare's FedAvg, FedProx or FedOpt recipe")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue a stopped run from its last global model (into RUN_DIR/resumed)")
    p.add_argument("--min-clients", type=int, default=None,
                   help="the job goes on while this many sites deliver (default: 2, or 1 with one site)")
    _deadline_args(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("report", help="tables, JSON and plots from a finished job (simulator, POC or production)")
    p.add_argument("path", help="run folder, workspace, downloaded job result or server job folder")
    p.add_argument("--out", default=None, help="where to write report.md/json and the plots (default: PATH)")
    p.add_argument("--compare", nargs="+", default=None, metavar="RUN_DIR",
                   help="fedseg train runs to show beside the federated figures (default: found beside PATH)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("poc", help="a local NVFlare POC deployment: provision, start, submit, wait, download, stop")
    p.add_argument("--task", default="spleen", choices=task_names())
    p.add_argument("--sites", type=int, default=2)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--local-epochs", type=int, default=None)
    p.add_argument("--cases", type=int, default=30)
    p.add_argument("--data", default=None, help="dataset folder (default data/<task>)")
    p.add_argument("--run-dir", default=None, help="default runs/<job name>_poc")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--via", choices=("cli", "api"), default="cli",
                   help="submit with `nvflare job submit` or the FLARE API (Session.submit_job)")
    p.add_argument("--bundle-code", action="store_true", help="ship fedseg inside the job (BYOC)")
    p.add_argument("--min-clients", type=int, default=None, help="the job goes on while this many sites deliver")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the job of an earlier `fedseg poc` whose server died, from its last global model")
    _deadline_args(p)
    p.set_defaults(func=cmd_poc)
    from fedseg.ray.cli import add_tune_command
    add_tune_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except (FedsegError, ValueError) as exc:
        if args.verbose:
            raise
        print(f"fedseg: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
