"""The NVFlare Client API loop that every fedseg job runs at every site.

Each training round the site (1) scores the received global model on its validation cases, so
the server can keep the best global model by ``val_dice``, (2) trains on it for the job's local
epochs, and (3) returns the new weights weighted by its number of training cases. Cross-site
evaluation tasks score a model on the site's test cases; submit-model tasks return the site's
last local model. Only numbers leave the site: metrics are named after classes, never cases.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import time
import zlib
from pathlib import Path
from typing import Mapping

import nvflare.client as flare
import torch
from nvflare.client.tracking import SummaryWriter

from fedseg.algorithms import algorithm_names, algorithm_option, get_algorithm
from fedseg.backends import make_site_trainer
from fedseg.checkpoint import save_model
from fedseg.data.fingerprint import changes, take_fingerprint
from fedseg.engine import Runtime
from fedseg.errors import ConfigError, FedsegError, NonFiniteLossError
from fedseg.flare.constants import LEAVING, NUM_STEPS, WITHHELD
from fedseg.progress import log_lines_only
from fedseg.site_config import find_site_config, load_site_config
from fedseg.site_data import open_site_data
from fedseg.tasks import VARIANTS, get_task, recipe_lever, task_names
from fedseg.transforms import seed_from

log = logging.getLogger("fedseg")


class SiteFailure(RuntimeError):
    """Raised to end a site's part; its message is safe to leave the site (no file names)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fedseg_client", description=__doc__)
    p.add_argument("--task", required=True, choices=task_names())
    p.add_argument("--variant", default="full", choices=VARIANTS)
    p.add_argument("--optimizer", default=None, help="one of the task's optimizer choices (default: the card's)")
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-local", default=None, metavar="REGEX",
                   help="parameters matching REGEX stay the site's own (e.g. normalization layers, FedBN)")
    p.add_argument("--recipe", action="append", default=[], type=recipe_lever, metavar="NAME=CHOICE",
                   help="a recipe lever of the job (fedseg.tasks.spec.LEVERS), e.g. augment=scanner; repeatable")
    p.add_argument("--algorithm", default="fedavg", choices=algorithm_names(),
                   help="the FL algorithm's site side (fedseg.algorithms); the server runs its controller")
    p.add_argument("--algorithm-option", action="append", default=[], type=algorithm_option, metavar="NAME=VALUE",
                   help="one of the algorithm's options (repeatable)")
    return p.parse_args(argv)


def keep_local(received: Mapping, local: Mapping | None, pattern: str | None) -> Mapping:
    """The received model with the site's own values for parameters matching ``pattern``.

    Such parameters never leave the site, so after the first round the server's model lacks them
    altogether; they are filled in from the site's last local model.
    """
    if not pattern or local is None:
        return received
    kept = re.compile(pattern)
    merged = dict(received)
    merged.update({k: v for k, v in local.items() if kept.search(k)})
    return merged


def weights_norm(weights: Mapping) -> float:
    """L2 norm over the floating-point parameters: a fingerprint of which model a round started from."""
    total = 0.0
    for v in weights.values():
        t = torch.as_tensor(v)
        if t.is_floating_point():
            total += float(t.double().pow(2).sum())
    return math.sqrt(total)


def private_report(cfg, name: str, text: str) -> Path:
    """Write ``text`` (which may name files) where only the site reads it; logs get a summary instead.

    Site logs can travel (NVFlare lets a job stream them to the server); this file never does: it
    sits beside the site's derived data, outside the job's workspace.
    """
    path = cfg.derived_dir("reports") / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return path


def _config_source(cfg_path: Path) -> tuple[str, bool]:
    """Where the site's YAML came from, in words that name no path (except a checkout's), and whether
    that is the source checkout fedseg is installed from (the demo default, easily not what a user means).
    """
    from fedseg.site_config import ENV_DIR, KIT_FILE, repository_site_configs

    if os.environ.get(ENV_DIR):
        return f"${ENV_DIR}", False
    if cfg_path.parts[-2:] == KIT_FILE.parts:
        return f"the site's startup kit ({KIT_FILE})", False
    repo = repository_site_configs()
    if repo is not None and cfg_path.parent == repo:
        return f"the source checkout ({cfg_path})", True
    return "its YAML", False


def checkout_warning(site: str, cfg_path: Path, cases: Mapping[str, int]) -> str:
    """The banner a site shows when it trains on the installed checkout's YAML rather than one the user chose.

    Several lines at WARNING level: ``nvflare simulator`` shows non-NVFlare warnings on its console in
    every log mode, and a banner stands out of the NVFlare lines around it.
    """
    from fedseg.site_config import ENV_DIR

    counts = ", ".join(f"{n} {split}" for split, n in cases.items())
    rule = "!" * 78
    return (f"\n{rule}\n"
            f"fedseg {site}: training on the site config of the source checkout fedseg is installed from:\n"
            f"    {cfg_path}\n"
            f"    ({counts} case(s))\n"
            f"  not one from the current folder, ${ENV_DIR} or the site's startup kit. If that is not the data\n"
            f"  you mean, stop the job and run it with {ENV_DIR}=<folder holding {site}.yaml>.\n{rule}")


def _open_site(site: str, args: argparse.Namespace):
    """Load the site's YAML and check its data; on failure the details stay at the site, a summary is raised."""
    spec = get_task(args.task, args.variant, args.optimizer, dict(args.recipe))
    cfg = None
    try:
        cfg = load_site_config(find_site_config(site))
        if cfg.site != site:
            raise ConfigError(f"{cfg.path} is written for site {cfg.site!r}, but this client is {site!r}")
        runtime = Runtime.for_site(cfg)
        data = open_site_data(spec, cfg, strict=False)
    except FedsegError as exc:
        kind = "site configuration invalid" if isinstance(exc, ConfigError) else "data unusable"
        where = private_report(cfg, f"{spec.name}_start", str(exc)) if cfg is not None else None
        log.error("fedseg %s cannot start: %s (%s)%s", site, kind, type(exc).__name__,
                  f"; details in {where}" if where else f":\n{exc}")
        raise SiteFailure(f"site {site} cannot train: {kind} ({type(exc).__name__}); details in the site's own log") from None
    if data.report.fatal:
        where = private_report(cfg, f"{spec.name}_data_check", data.report.render())
        log.error("fedseg %s: data check failed: %s; the problems, file by file, are in %s",
                  site, data.report.summary(), where)
        raise SiteFailure(f"site {site} cannot train: data check failed: {data.report.summary()}")
    cases = {split: len(data.datalist.cases(split)) for split in ("training", "validation", "test")}
    source, from_checkout = _config_source(cfg.path)
    if from_checkout:
        log.warning(checkout_warning(site, cfg.path, cases))
    log.info("fedseg %s: site config from %s; %s; data check passed (%s); task %s/%s on %s", site,
             source, ", ".join(f"{n} {k} case(s)" for k, n in cases.items()),
             data.report.summary(), spec.name, spec.variant_name, runtime.device)
    return spec, data, runtime, cfg


def round_progress(model) -> tuple[float, float]:
    """The part of the whole federated run that this round covers (a resumed job starts part-way)."""
    start = model.start_round or 0
    total = start + (model.total_rounds or 1)
    return model.current_round / total, (model.current_round + 1) / total


def _leave(failure: SiteFailure, *, received: bool = False) -> None:
    """Answer the current (or next) task with the reason this site cannot take part, then end its part.

    The reason travels as a withheld update marked as leaving, so the server's UpdateGuard logs it,
    the controller stops sending this site tasks (cross-site evaluation included) and the job goes
    on with the other sites; the message names problem kinds and counts, never files.
    """
    if flare.is_running():
        if not received:
            flare.receive()
        flare.send(flare.FLModel(metrics={"site_failed": 1.0}, meta={WITHHELD: str(failure), LEAVING: True}))


def _check_unchanged(site: str, fingerprint, cfg) -> None:
    """Raise :class:`SiteFailure` if the site's files changed since its check (the file list stays at the site)."""
    report = changes(fingerprint)
    if report.fatal:
        where = private_report(cfg, "data_changed", report.render())
        log.error("fedseg %s: data changed since the check (%s), the site stops taking part; the files are listed "
                  "in %s", site, report.summary(), where)
        raise SiteFailure(f"site {site} stops: its data changed since the check: {report.summary()}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    log_lines_only()
    flare.init()
    site = flare.get_site_name()
    algorithm = get_algorithm(args.algorithm)
    try:
        spec, data, runtime, cfg = _open_site(site, args)
        if cfg.backend not in algorithm.backends:
            raise SiteFailure(f"site {site} cannot train: {algorithm.name} does not run on backend {cfg.backend!r} "
                              f"(it supports {', '.join(algorithm.backends)})")
        rounds = algorithm.site(dict(args.algorithm_option))
    except SiteFailure as failure:
        _leave(failure)
        return
    import fedseg

    log.info("fedseg %s: fedseg %s from %s; algorithm %s", site, fedseg.__version__, Path(fedseg.__file__).parent,
             algorithm.name)
    fingerprint = take_fingerprint(data.datalist)
    trainer = make_site_trainer(data, runtime, seed=seed_from(args.seed, zlib.crc32(site.encode())))
    tracker = SummaryWriter()
    out = Path.cwd() / "fedseg"
    local_model = out / f"{spec.name}_local_model.pt"
    history = out / f"{spec.name}_rounds.jsonl"
    last_weights = None
    try:
        while flare.is_running():
            model = flare.receive()
            try:
                _check_unchanged(site, fingerprint, cfg)
            except SiteFailure as failure:
                _leave(failure, received=True)
                return
            if flare.is_submit_model():
                if last_weights is None:
                    raise SiteFailure(f"site {site}: asked for its local model before training any round")
                flare.send(flare.FLModel(params=rounds.model_to_submit(last_weights)))
                continue
            params = keep_local(model.params, last_weights, args.keep_local)
            if flare.is_evaluate():
                scores = trainer.evaluate(params, "test")
                log.info("fedseg %s: cross-site test Dice %.4f on %d case(s)", site, scores.mean, scores.n_cases)
                flare.send(flare.FLModel(metrics=scores.as_metrics("test")))
                continue
            start = time.perf_counter()
            val = trainer.evaluate(params, "validation")
            log.info("fedseg %s round %s: training %d local epoch(s)", site, model.current_round, args.local_epochs)
            try:
                output = rounds.train_round(trainer, params, model.meta or {}, epochs=args.local_epochs,
                                            progress=round_progress(model))
            except NonFiniteLossError as exc:
                # Withhold this round's update; the server's UpdateGuard logs it and FedAvg skips it.
                log.error("fedseg %s round %s: %s; update withheld", site, model.current_round, exc)
                flare.send(flare.FLModel(metrics=val.as_metrics("val"), meta={WITHHELD: f"non-finite loss ({exc.value})"}))
                continue
            except FedsegError as exc:
                # The details stay here (a message may name local things); the server learns the kind only.
                log.error("fedseg %s round %s: training failed: %s; update withheld", site, model.current_round, exc)
                flare.send(flare.FLModel(metrics=val.as_metrics("val"),
                                         meta={WITHHELD: f"training failed at the site ({type(exc).__name__})"}))
                continue
            result = output.result
            last_weights = result.weights
            save_model(local_model, result.weights, spec, round=model.current_round)
            for name, weights in rounds.models_to_keep().items():
                save_model(out / f"{spec.name}_{name}_model.pt", weights, spec, round=model.current_round)
            # Only finite numbers travel: a site without validation cases sends no val_dice at all (the
            # server then leaves it out of best-model selection, and says so), not a NaN.
            metrics = {k: v for k, v in {**val.as_metrics("val"), "train_loss": result.final_loss,
                                         "learning_rate": result.learning_rate, **output.metrics}.items()
                       if math.isfinite(v)}
            with history.open("a") as fh:  # stays at the site
                fh.write(json.dumps({"round": model.current_round, "seconds": round(time.perf_counter() - start, 2),
                                     "global_weights_norm": weights_norm(model.params), **metrics}) + "\n")
            for key, value in metrics.items():
                tracker.add_scalar(key, value, global_step=model.current_round)
            log.info("fedseg %s round %s: global model val_dice %.4f; trained %d iteration(s), loss %.4f",
                     site, model.current_round, val.mean, result.iterations, result.final_loss)
            flare.send(flare.FLModel(params=result.weights, metrics=metrics,
                                     meta={NUM_STEPS: result.n_samples, **output.meta}))
    finally:
        trainer.close()


if __name__ == "__main__":
    main()
