"""The ``fedseg`` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path

from fedseg.algorithms import algorithm_names, algorithm_option
from fedseg.backends import TrainOptions, backend_names, get_backend
from fedseg.errors import CheckpointError, FedsegError
from fedseg.progress import bar_wanted
from fedseg.run_dirs import claim_run_dir, new_run_dir, non_negative_float, non_negative_int, positive_int
from fedseg.site_config import PRECISIONS
from fedseg.tasks import VARIANTS, get_task, recipe_lever, task_names

log = logging.getLogger("fedseg")


def _task_args(p: argparse.ArgumentParser, variant_default: str | None = "full") -> None:
    p.add_argument("--task", required=True, choices=task_names())
    p.add_argument("--variant", default=variant_default, choices=VARIANTS,
                   help="full: the card's recipe; tiny: small patches and channels for CPU")
    _recipe_arg(p)


def _recipe_arg(p: argparse.ArgumentParser) -> None:
    from fedseg.tasks.spec import LEVERS

    p.add_argument("--recipe", action="append", default=None, type=recipe_lever, metavar="NAME=CHOICE",
                   help="change a part of the card's recipe: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in LEVERS.items())
                        + " (e.g. augment=scanner, norm=instance); repeatable")


def _levers(a) -> dict[str, str]:
    return dict(a.recipe or [])


def _runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="override the site's device (auto, cpu, cuda, cuda:N)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: the site's num_threads)")
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="override the site's precision (auto: fp16 AMP on CUDA, fp32 on CPU)")


# data -------------------------------------------------------------------------------------------
def cmd_data_synth(a) -> int:
    from fedseg.data.synth import synthesize

    info = synthesize(a.task, Path(a.out), a.cases, seed=a.seed, workers=a.workers, phases=a.phases)
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


def _phase_mix(text: str) -> str:
    """``--phases``: checked here, so that a bad mix is a usage error naming the phase."""
    from fedseg.data.phantoms.phases import parse_phase_mix

    try:
        parse_phase_mix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


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
                          Runtime.create(a.device or "auto", precision=a.precision or "auto", num_threads=a.threads))
    out = annotator.annotate(Path(a.image), a.slice, a.fg, a.bg or [], Path(a.out))
    print(f"wrote {out}")
    return 0


# train / infer ----------------------------------------------------------------------------------
def cmd_train(a) -> int:
    from fedseg.site_config import load_site_config

    spec = get_task(a.task, a.variant, a.optimizer, _levers(a))
    paths = a.pooled or ([a.site_config] if a.site_config else [])
    if not paths:
        raise FedsegError("give --site-config SITE.yaml (one site) or --pooled SITE.yaml ... (centralized)")
    sites = [load_site_config(Path(p)) for p in paths]
    mode = "pooled" if a.pooled else sites[0].site
    init = None
    if a.init:
        from fedseg.checkpoint import load_initial_model

        init = load_initial_model(Path(a.init), spec)  # refused, mismatches listed, before any folder is made
    options = TrainOptions(epochs=a.epochs, val_every=a.val_every, seed=a.seed, tracking=a.tracking, init_weights=init,
                           device=a.device, threads=a.threads, precision=a.precision, workers=a.workers,
                           gpus_per_worker=a.gpus_per_worker, address=a.address,
                           resume=Path(a.resume) if a.resume else None)
    run = get_backend(a.backend).load("runner")
    if a.resume:
        out = Path(a.resume)
    elif a.out:
        out = claim_run_dir(Path(a.out), overwrite=a.overwrite, replaced=TRAIN_OUTPUTS)
    else:
        out = new_run_dir(spec.name, mode, a.backend)
    print(f"run folder: {out}", flush=True)
    result = run(spec, sites, out, options)
    print(result.table())
    best = (f"best validation Dice {result.best_val_dice:.4f} at epoch {result.best_epoch}" if result.best_epoch
            else "no validation score: no best model")
    figures = _local_figures(spec, sites, out, result, device=a.device, threads=a.threads)
    print(f"{best}; wall time {result.wall_time_s:.0f} s; results in {out / 'results.json'}; "
          f"report and {len(figures)} figure(s) in {out / 'report.md'}")
    return 0


# What a train run writes into its folder: removed first when --overwrite reuses a folder.
TRAIN_OUTPUTS = ("results.json", "best_model.pt", "final_model.pt", "report.md", "tb_events", "mlflow.db",
                 "mlartifacts", "ray_run.json", "ray_results", "*.png")
# What simulate and poc write (poc: also its deployment and downloads).
SIMULATE_OUTPUTS = ("results.json", "run.json", "sim_env.json", "report.md", "report.json", "*.png", "workspace", "job",
                    "site_configs", "simulator.log", "resume_from.pt", "resumed")
POC_OUTPUTS = SIMULATE_OUTPUTS + ("deployment", "download", "job_resumed", "resume_from_*.pt")


def _local_figures(spec, sites, out: Path, result, *, device: str | None, threads: int | None) -> list[Path]:
    """Overlay pictures of the run's best (else final) model on a few test cases, then the run's report."""
    from fedseg.engine import Runtime
    from fedseg.runners.report import write_local_report
    from fedseg.site_data import open_site_data
    from fedseg.site_eval import write_overlays

    for stale in out.glob("overlay_*.png"):
        stale.unlink()
    model = out / "best_model.pt" if result.best_epoch else out / "final_model.pt"
    try:
        data = [open_site_data(spec, s) for s in sites]
        write_overlays(spec, model, data, out, Runtime.for_site(sites[0], device=device, num_threads=threads),
                       model_label="best" if result.best_epoch else "final")
    except FedsegError as exc:
        log.warning("fedseg: overlay pictures skipped: %s", exc)
    return [p for p in write_local_report(out) if p.suffix == ".png"] + sorted(out.glob("overlay_*.png"))


def detect_variant(task: str, model: Path, levers: dict[str, str] | None = None) -> str:
    """The variant a model file fits: recorded in fedseg files, found by shape for others."""
    from fedseg.checkpoint import load_model, model_variant

    recorded = model_variant(model)
    if recorded:
        return recorded
    for variant in VARIANTS:
        try:
            load_model(model, get_task(task, variant, levers=levers))
            return variant
        except CheckpointError:
            continue
    raise CheckpointError(f"{model}: fits neither variant of task {task!r} ({', '.join(VARIANTS)})")


def cmd_infer(a) -> int:
    from fedseg.engine import Runtime
    from fedseg.infer import Predictor, check_input, plan_outputs

    # Everything that can be refused is refused before the model runs: outputs, model file, inputs.
    pairs = plan_outputs([Path(i) for i in a.image], a.out)
    variant = a.variant or detect_variant(a.task, Path(a.model), _levers(a))
    spec = get_task(a.task, variant, levers=_levers(a))
    for image, _ in pairs:
        if not image.is_dir():
            check_input(image, spec)
    predictor = Predictor(spec, Path(a.model), Runtime.create(a.device or "auto", precision=a.precision or "auto", num_threads=a.threads))
    # Closed on every way out, so that its read-ahead thread ends with the command, not at collection.
    with contextlib.closing(predictor.segment_files([(i, o) for i, o in pairs if not i.is_dir()])) as nifti:
        for k, (image, out) in enumerate(pairs, start=1):
            if image.is_dir():
                from fedseg.infer_dicom import segment_series

                written = segment_series(predictor, image, out)
            else:
                written = [next(nifti)]  # in order
            counter = f"[{k}/{len(pairs)}] " if len(pairs) > 1 else ""
            print(f"{counter}{image}: wrote {', '.join(str(p) for p in written)}", flush=True)
    return 0


def cmd_export(a) -> int:
    """A trained model as a MONAI bundle (metadata, inference config, weights, TorchScript)."""
    from fedseg.bundle import export_bundle

    model = Path(a.model)
    spec = get_task(a.task, a.variant or detect_variant(a.task, model, _levers(a)), levers=_levers(a))
    out = claim_run_dir(Path(a.out), overwrite=a.overwrite, replaced=("configs", "models"))
    export_bundle(spec, model, out, run_dir=Path(a.run_dir) if a.run_dir else None)
    print(f"wrote MONAI bundle {out} (run it: python -m monai.bundle run --config_file {out}/configs/inference.json "
          f"--bundle_root {out} --dataset_dir IMAGES --output_dir OUT)", flush=True)
    return 0


def cmd_evaluate(a) -> int:
    """At a site: a model's Dice per test case, its spread and overlay pictures; nothing leaves the machine."""
    from fedseg.engine import Runtime
    from fedseg.plots import figure_case_spread, save_figure
    from fedseg.results import write_json
    from fedseg.runners.report import pooled_cases
    from fedseg.site_config import load_site_config
    from fedseg.site_data import open_site_data
    from fedseg.site_eval import score_cases, write_overlays

    model = Path(a.model)
    spec = get_task(a.task, a.variant or detect_variant(a.task, model, _levers(a)), levers=_levers(a))
    site = load_site_config(Path(a.site_config))
    out = (claim_run_dir(Path(a.out), overwrite=a.overwrite) if a.out
           else new_run_dir(spec.name, site.site, "evaluate"))
    data = open_site_data(spec, site)
    runtime = Runtime.for_site(site, device=a.device, num_threads=a.threads, precision=a.precision)
    label = model.stem
    per_case = score_cases(spec, {label: model}, [data], runtime)[label]
    classes = data.class_names[1:]
    write_json(out / "evaluation.json", {"task": spec.name, "variant": spec.variant_name, "site": site.site,
                                         "model": model.name, "classes": list(classes), "per_case_dice": per_case})
    spread = save_figure(figure_case_spread([(label, pooled_cases(per_case, classes), "cases")], classes,
                                            title=f"{model.name} on {site.site}'s test cases"),
                         out / "case_dice_spread.png")
    pictures = write_overlays(spec, model, [data], out, runtime, model_label=label, max_cases=a.overlays)
    for name in classes:
        values = [v for v in per_case[site.site][name] if v is not None]
        shown = f"mean {sum(values) / len(values):.4f}, min {min(values):.4f}, max {max(values):.4f}" if values else "n/a"
        print(f"{site.site} {name}: {len(values)} case(s), {shown}")
    print(f"wrote {out / 'evaluation.json'}, {spread}" + "".join(f", {p}" for p in pictures))
    return 0


# jobs / simulate --------------------------------------------------------------------------------
def cmd_jobs_export(a) -> int:
    from fedseg.flare.jobs import COMMITTED, export_job, job_for, resumed

    overrides = dict(variant=a.variant, num_rounds=a.rounds, local_epochs=a.local_epochs, min_clients=a.min_clients,
                     privacy=a.privacy, tracking=a.tracking, gpus=a.gpus, site_gpus=_site_gpus(a.site_gpus),
                     algorithm_options=tuple(a.algorithm_option) if a.algorithm_option else None,
                     recipe=tuple(a.recipe) if a.recipe else None, **_deadline_overrides(a))
    if a.algorithm_option and not a.task:
        raise FedsegError("--algorithm-option needs --task and --algorithm: options belong to one algorithm")
    if a.task:
        jobs = (job_for(a.task, a.algorithm or "fedavg").with_overrides(**overrides),)
    else:
        jobs = tuple(j.with_overrides(**overrides) for j in COMMITTED)
    if a.resume_from:
        if len(jobs) != 1:
            raise FedsegError("--resume-from needs --task: it resumes one job")
        jobs = (resumed(jobs[0], Path(a.resume_from), a.server_path),)
    shipped = None
    if a.initial_model:
        if len(jobs) != 1:
            raise FedsegError("--initial-model needs --task: a model fits one task")
        if a.server_path:  # the file is (or will be) on the server: check it here, name its path there
            from fedseg.checkpoint import load_initial_model

            load_initial_model(Path(a.initial_model), jobs[0].spec)
            jobs = (jobs[0].with_overrides(initial_model=a.server_path),)
        else:
            shipped = Path(a.initial_model)
    for job in jobs:
        print(f"exported {export_job(job, Path(a.out), bundle_code=a.bundle_code, initial_weights=shipped)}")
    return 0


def cmd_jobs_allow_list(a) -> int:
    from fedseg.flare.allow_list import allow_classes, committed_job_classes, required_classes

    classes = required_classes([Path(j) for j in a.job]) if a.job else committed_job_classes()
    if a.local_dir:
        print(f"allowed {len(classes)} class(es) in {allow_classes(Path(a.local_dir), classes)}")
    else:
        print("\n".join(classes))
    return 0


def _algorithm_args(p: argparse.ArgumentParser, default: str | None) -> None:
    _recipe_arg(p)
    p.add_argument("--algorithm", default=default, choices=algorithm_names(),
                   help="the FL algorithm (fedseg.algorithms; default fedavg): " + ", ".join(algorithm_names()))
    p.add_argument("--algorithm-option", action="append", default=None, type=algorithm_option, metavar="NAME=VALUE",
                   help="one of the algorithm's options, e.g. mu=0.05 (FedProx), server_lr=0.5 (FedOpt), "
                        "lambda=0.5 (Ditto); repeatable")


def _deadline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--round-timeout", type=positive_int, default=None, metavar="S",
                   help="every training round ends after S seconds at the latest (default: the variant's, see README)")
    p.add_argument("--straggler-grace", type=non_negative_int, default=None, metavar="S",
                   help="once min-clients updates are in, wait at most S more seconds for the rest")
    p.add_argument("--heartbeat-timeout", type=positive_int, default=None, metavar="S",
                   help="a site silent for S seconds is treated as lost until it beats again")


def _tracking_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking", default=None, choices=("tensorboard", "mlflow"),
                   help="the job's experiment tracking (NVFlare add_experiment_tracking): TensorBoard events in "
                        "the server job's tb_events/ (default) or MLflow (the server job's mlflow.db; pip install "
                        "'fedseg[mlflow]' on the server)")


def _deadline_overrides(a) -> dict:
    return dict(round_timeout=a.round_timeout, straggler_grace=a.straggler_grace,
                heartbeat_timeout=a.heartbeat_timeout)


def _site_backends(values: list[str] | None) -> dict[str, str]:
    pairs = {}
    for value in values or []:
        site, _, backend = value.partition("=")
        if not site or backend not in backend_names():
            raise FedsegError(f"--site-backend takes SITE=BACKEND with BACKEND one of {', '.join(backend_names())} "
                              f"(e.g. site-1=ray), got {value!r}")
        pairs[site] = backend
    return pairs


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
    if a.job:
        meta = Path(a.job) / "meta.json"
        if not meta.is_file():
            raise FedsegError(f"{a.job}: not a job folder (no meta.json)")
        # A committed folder is what the generator writes for its name (tests/test_jobs.py checks), so
        # the generator's job runs; a hand-edited folder runs under plain `nvflare simulator`.
        job = committed_job(json.loads(meta.read_text())["name"])
    else:
        job = job_for(a.task or "spleen", a.algorithm)
    overridden = job.with_overrides(num_rounds=a.rounds, local_epochs=a.local_epochs,
                                    min_clients=a.min_clients or min(2, a.sites), privacy=a.privacy,
                                    tracking=a.tracking,
                                    algorithm_options=tuple(a.algorithm_option) if a.algorithm_option else None,
                                    recipe=tuple(a.recipe) if a.recipe else None, **_deadline_overrides(a))
    job = overridden
    data_dir = Path(a.data or f"data/{job.task}")
    if a.run_dir:
        run_dir = claim_run_dir(Path(a.run_dir), overwrite=a.overwrite, flag="--run-dir", replaced=SIMULATE_OUTPUTS)
    else:
        run_dir = new_run_dir(job.name, f"{a.sites}sites", "simulator")
    print(f"run folder: {run_dir}", flush=True)
    result = simulate(job, n_sites=a.sites, data_dir=data_dir, run_dir=run_dir, cases=a.cases, seed=a.seed,
                      initial_weights=Path(a.initial_model) if a.initial_model else None,
                      site_backends=_site_backends(a.site_backend), report=not a.no_report)
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
          + (f"report in {run_dir / 'report.md'}; figures: {', '.join(sorted(p.name for p in run_dir.glob('*.png')))}"
             if (run_dir / "report.md").is_file() else "no report (--no-report)"))
    return 0 if result.results.finished else 1


def cmd_report(a) -> int:
    from fedseg.flare.report import write_report

    from fedseg.runners.report import read_local_run, write_local_report

    try:
        read_local_run(Path(a.path))
    except FedsegError:
        pass  # not a fedseg train run: a federated job
    else:
        written = write_local_report(Path(a.path), Path(a.out) if a.out else None)
        print(written[0].read_text())
        print(f"wrote {', '.join(str(p) for p in written)}")
        return 0
    report, out = write_report(Path(a.path), Path(a.out) if a.out else None,
                               [Path(c) for c in a.compare] if a.compare else None)
    print(report.markdown())
    print(f"\nwrote {out / 'report.md'}, {out / 'report.json'}, {', '.join(str(p) for p in report.figures)}")
    return 0


def cmd_poc(a) -> int:
    from fedseg.flare.jobs import export_job, job_for
    from fedseg.flare.poc import ServerLost, resume_poc, run_poc
    from fedseg.results import render_table

    job = job_for(a.task).with_overrides(num_rounds=a.rounds, local_epochs=a.local_epochs,
                                         min_clients=a.min_clients or min(2, a.sites), **_deadline_overrides(a))
    if a.resume:
        run_dir = Path(a.resume)
    elif a.run_dir:
        run_dir = claim_run_dir(Path(a.run_dir), overwrite=a.overwrite, flag="--run-dir", replaced=POC_OUTPUTS)
    else:
        run_dir = new_run_dir(job.name, f"{a.sites}sites", "poc")
    print(f"run folder: {run_dir}", flush=True)
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


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line: the full usage is one ``--help`` away (subcommands inherit this class)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedseg", description="Federated 3D segmentation on NVFlare and MONAI")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="phantoms, splits and checks").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="write an MSD-layout dataset of synthetic phantoms")
    p.add_argument("--task", required=True, choices=task_names())
    p.add_argument("--out", required=True)
    p.add_argument("--cases", type=positive_int, default=20)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--workers", type=positive_int, default=1, help="processes drawing phantoms in parallel")
    p.add_argument("--phases", type=_phase_mix, default=None,
                   help="CT contrast-phase mix, e.g. portal-venous=0.7,arterial=0.1,delayed=0.1,non-contrast=0.1 "
                        "or one phase name (default: that Decathlon-like mix)")
    p.set_defaults(func=cmd_data_synth)
    p = data.add_parser("split", help="write one Decathlon datalist per site and a pooled site-All list")
    p.add_argument("--dataset", required=True, help="dataset root holding dataset.json")
    p.add_argument("--sites", type=positive_int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=non_negative_int, default=0)
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
    p.add_argument("--epochs", type=positive_int, default=100)
    p.add_argument("--val-every", type=positive_int, default=5)
    p.add_argument("--optimizer", default=None, help="one of the task's optimizer choices")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--out", default=None,
                   help="run folder (default: a new runs/<task>_<site|pooled>_<backend>_<date-time>); "
                        "refused if it holds anything, unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="reuse a non-empty --out, replacing its run's files")
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="start from a model (fedseg or NVFlare model file, or a MONAI bundle) instead of random weights")
    p.add_argument("--backend", choices=backend_names(), default="local",
                   help="; ".join(f"{name}: {get_backend(name).summary}" for name in backend_names()))
    p.add_argument("--workers", type=positive_int, default=2, help="Ray workers (with --backend ray)")
    p.add_argument("--gpus-per-worker", type=non_negative_float, default=0.0)
    p.add_argument("--address", default=None, help="Ray cluster address (ray://host:port or auto)")
    p.add_argument("--resume", default=None, help="continue a stopped Ray run from its run folder")
    p.add_argument("--tracking", default=None, choices=("tensorboard", "mlflow", "none"),
                   help="where metrics go: <run>/tb_events (default, when tensorboard is installed) or an MLflow "
                        "run in <run>/mlflow.db (or $MLFLOW_TRACKING_URI)")
    _runtime_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("infer", help="segment a volume; the mask is written on the input's grid")
    _task_args(p, variant_default=None)
    p.add_argument("--model", required=True)
    p.add_argument("--image", required=True, nargs="+",
                   help="NIfTI files and/or folders each holding one DICOM series (the model is loaded once)")
    p.add_argument("--out", required=True,
                   help="mask.nii.gz (or .nii); for a DICOM series also mask.dcm: a DICOM SEG plus mask.nii.gz beside "
                        "it; or a folder (existing, or ending in /) receiving <input name>_mask.nii.gz per input")
    _runtime_args(p)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("export", help="a trained model as a MONAI bundle (configs/metadata.json, configs/inference.json, "
                                      "models/model.pt, models/model.ts)")
    _task_args(p, variant_default=None)
    p.add_argument("--model", required=True, help="a fedseg or NVFlare model file (e.g. a job's best global model)")
    p.add_argument("--out", required=True, help="the bundle folder (refused if it holds anything, unless --overwrite)")
    p.add_argument("--run-dir", default=None,
                   help="the run the model came from: its rounds, site count and job go into the metadata (no names)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="at a site: a model's Dice per test case, its spread and overlay pictures "
                                        "(e.g. a downloaded global model; nothing is sent anywhere)")
    _task_args(p, variant_default=None)
    p.add_argument("--model", required=True, help="a fedseg or NVFlare model file")
    p.add_argument("--site-config", required=True, help="the site's YAML: its test cases are scored")
    p.add_argument("--out", default=None, help="default: a new runs/<task>_<site>_evaluate_<date-time>")
    p.add_argument("--overwrite", action="store_true", help="reuse a non-empty --out")
    p.add_argument("--overlays", type=non_negative_int, default=3, help="test cases to picture (default 3)")
    _runtime_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("annotate", help="Deepgrow 2D: the clicked object's mask on one slice")
    p.add_argument("--model", required=True, help="a deepgrow2d model file")
    p.add_argument("--variant", default=None, choices=VARIANTS, help="default: read from the model file")
    p.add_argument("--image", required=True, help="a 3D CT NIfTI")
    p.add_argument("--slice", type=non_negative_int, required=True, help="index z along the image's third array axis")
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
    p.add_argument("--rounds", type=positive_int, default=None)
    p.add_argument("--local-epochs", type=positive_int, default=None)
    p.add_argument("--min-clients", type=positive_int, default=None)
    p.add_argument("--privacy", default=None, choices=("none", "exclude", "percentile"),
                   help="exclude: normalization layers stay at each site; percentile: NVFlare PercentilePrivacy")
    _tracking_arg(p)
    _algorithm_args(p, default=None)
    p.add_argument("--resume-from", default=None, metavar="FL_GLOBAL_MODEL.pt",
                   help="continue a stopped job from this saved global model, at the round after the one it records")
    p.add_argument("--server-path", default=None,
                   help="where the server sees --resume-from or --initial-model (default: --resume-from's local "
                        "path; --initial-model is shipped in the job)")
    p.add_argument("--initial-model", default=None, metavar="MODEL",
                   help="start from these weights: a fedseg or NVFlare model file or a MONAI bundle that fits the task")
    p.add_argument("--gpus", type=non_negative_int, default=None,
                   help="GPUs every site must offer (meta.json resource_spec)")
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
    p.add_argument("--job", default=None,
                   help="a committed job folder, e.g. jobs/spleen_fedavg (default: generated for --task); "
                        "run hand-edited folders with `nvflare simulator`")
    p.add_argument("--task", default=None, choices=task_names())
    p.add_argument("--sites", type=positive_int, default=2)
    p.add_argument("--rounds", type=positive_int, default=None)
    p.add_argument("--local-epochs", type=positive_int, default=None)
    p.add_argument("--cases", type=positive_int, default=30, help="phantoms to synthesize if the dataset is missing")
    p.add_argument("--data", default=None, help="dataset folder (default data/<task>)")
    p.add_argument("--run-dir", default=None,
                   help="default: a new runs/<job name>_<N>sites_simulator_<date-time>; refused if it holds anything, "
                        "unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="reuse a non-empty --run-dir, replacing its run's files")
    _tracking_arg(p)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--privacy", default=None, choices=("none", "exclude", "percentile"))
    _algorithm_args(p, default="fedavg")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue a stopped run from its last global model (into RUN_DIR/resumed)")
    p.add_argument("--min-clients", type=positive_int, default=None,
                   help="the job goes on while this many sites deliver (default: 2, or 1 with one site)")
    p.add_argument("--initial-model", default=None, metavar="MODEL",
                   help="start from these weights: a fedseg or NVFlare model file or a MONAI bundle that fits the task")
    p.add_argument("--site-backend", nargs="+", default=None, metavar="SITE=BACKEND",
                   help="sites that train elsewhere than in process, e.g. site-1=ray (its own local Ray, 2 workers)")
    p.add_argument("--no-report", action="store_true",
                   help="skip the per-case scores, overlay pictures and report.md (results.json is still written)")
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
    p.add_argument("--sites", type=positive_int, default=2)
    p.add_argument("--rounds", type=positive_int, default=None)
    p.add_argument("--local-epochs", type=positive_int, default=None)
    p.add_argument("--cases", type=positive_int, default=30)
    p.add_argument("--data", default=None, help="dataset folder (default data/<task>)")
    p.add_argument("--run-dir", default=None,
                   help="default: a new runs/<job name>_<N>sites_poc_<date-time>; refused if it holds anything, "
                        "unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="reuse a non-empty --run-dir, replacing its run's files")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--via", choices=("cli", "api"), default="cli",
                   help="submit with `nvflare job submit` or the FLARE API (Session.submit_job)")
    p.add_argument("--bundle-code", action="store_true", help="ship fedseg inside the job (BYOC)")
    p.add_argument("--min-clients", type=positive_int, default=None, help="the job goes on while this many sites deliver")
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
    # SIGTERM (a scheduler, `kill`) as an exit, so that the cleanup around every child process runs.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if _main_thread() else None
    try:
        if bar_wanted():
            from tqdm.contrib.logging import logging_redirect_tqdm

            with logging_redirect_tqdm():  # log lines printed above the progress bars, not through them
                return args.func(args)
        return args.func(args)
    except (FedsegError, ValueError) as exc:
        if args.verbose:
            raise
        print(f"fedseg: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum, _frame) -> None:
    raise SystemExit(128 + signum)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
