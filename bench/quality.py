"""How much federated training loses against pooling the data: methods x splits, over seeds, with intervals.

For every split (IID, scanner-heterogeneous sites, unequal site sizes) the phantoms are drawn and
split once (``fedseg data split``, ``--mode scanner`` rewriting each site's cases for its own
scanner). For every seed, every method starts from the same initial weights (the seeded network,
saved once and handed to the FL server's persistor with ``--initial-model`` and to the
centralized and single-site runs with ``--init``) and trains the same total epochs (federated:
rounds x local epochs). Every method's final model is then scored by the same code
(:func:`fedseg.site_eval.score_cases`) on every site's test cases, case by case, so the table
compares like with like: per-site and pooled mean Dice with 95% bootstrap intervals over seeds and
cases, and paired differences against centralized (:mod:`bench.stats`).

Federated methods run as users run them (``fedseg.flare.simulate.simulate``: NVFlare's SimEnv, the
generated job, cross-site evaluation); centralized is ``run_local`` on all sites' YAMLs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.stats import interval, paired_difference

log = logging.getLogger("fedseg")


@dataclass(frozen=True)
class Split:
    name: str
    sites: int
    mode: str = "iid"  # iid | scanner (fedseg data split --mode)
    shares: tuple[float, ...] | None = None  # relative site sizes (None: equal)


@dataclass(frozen=True)
class Method:
    """One way to train: ``centralized`` (all sites pooled) or ``federated`` with an algorithm."""

    name: str
    kind: str = "federated"
    algorithm: str = "fedavg"
    options: tuple[tuple[str, float], ...] = ()
    local_epochs: int | None = None  # federated: epochs per round (None: the plan's)
    recipe: tuple[tuple[str, str], ...] = ()  # recipe levers (fedseg.tasks.spec.LEVERS), e.g. augment=scanner
    # Centralized only: the plan's epochs divided by the number of sites, i.e. as many optimizer steps
    # as FedAvg's global model takes on equal-size sites (each site steps through its own share per
    # epoch). Tells how much of FedAvg's gap is fewer sequential steps rather than heterogeneity.
    federated_steps: bool = False
    # "seeded": the seed's random network (every method of a seed alike); "pretrained": a model trained
    # elsewhere first (:func:`_pretrained_model`), as a consortium starts from a published one.
    start: str = "seeded"
    # Federated only: "exclude" keeps the normalization layers at each site (FedBN-style, the job's
    # ``--privacy exclude``); the server's model then lacks them, so each site's own model is scored too.
    privacy: str = "none"

    def spec(self, plan: "Plan"):
        from fedseg.tasks import get_task

        return get_task(plan.task, plan.variant, levers=dict(self.recipe) or None)


SPLITS = {
    "iid2": Split("iid2", 2),
    "scanner2": Split("scanner2", 2, "scanner"),
    "scanner4": Split("scanner4", 4, "scanner"),
    "unequal4": Split("unequal4", 4, "iid", (4.0, 1.0, 1.0, 1.0)),
}
METHODS = {m.name: m for m in (
    Method("centralized", "centralized"),
    Method("centralized_fedsteps", "centralized", federated_steps=True),
    Method("fedavg"),
    Method("fedprox_mu0.01", algorithm="fedprox", options=(("mu", 0.01),)),
    Method("fedprox_mu0.1", algorithm="fedprox", options=(("mu", 0.1),)),
    Method("fedopt_lr1_m0.6", algorithm="fedopt", options=(("server_lr", 1.0), ("server_momentum", 0.6))),
    Method("fedopt_lr0.5_m0.9", algorithm="fedopt", options=(("server_lr", 0.5), ("server_momentum", 0.9))),
    # The averaged update of 2 equal sites moves the model about as far as one site's: a server lr of 2
    # gives it the pooled run's step per epoch (cf. centralized_fedsteps).
    Method("fedopt_lr2_m0", algorithm="fedopt", options=(("server_lr", 2.0), ("server_momentum", 0.0))),
    Method("scaffold", algorithm="scaffold"),
    Method("ditto", algorithm="ditto"),
    # Ditto's personalised models at the global model's budget: 4 epochs a round, not the default 1.
    Method("ditto_e4", algorithm="ditto", options=(("epochs", 4),)),
    Method("fedavg_1epoch", local_epochs=1),
    # Data-side levers (issue 16, item 2): scanner-range intensity augmentation, instance norm (FedBN-like:
    # no running statistics to average), each for FedAvg and for the pooled baseline.
    Method("fedavg_augscanner", recipe=(("augment", "scanner"),)),
    Method("centralized_augscanner", "centralized", recipe=(("augment", "scanner"),)),
    Method("fedavg_halfbatch", recipe=(("batch", "half"),)),  # the pooled run's step count (centralized_fedsteps)
    Method("centralized_halfbatch", "centralized", recipe=(("batch", "half"),)),  # does pooling gain as much?
    Method("fedavg_instancenorm", recipe=(("norm", "instance"),)),
    Method("fedbn", privacy="exclude"),  # batch norm layers stay at each site (FedBN)
    Method("fedavg_casenorm", recipe=(("intensity", "case"),)),  # each case z-scored on its own tissue
    Method("centralized_casenorm", "centralized", recipe=(("intensity", "case"),)),
    Method("fedavg_pretrained", start="pretrained"),  # issue 13: rounds to a Dice bar from a pretrained start
    Method("centralized_instancenorm", "centralized", recipe=(("norm", "instance"),)),
)}


@dataclass(frozen=True)
class Plan:
    """What one quality measurement runs; the defaults fit a couple of hours on 2 CPU cores per split."""

    splits: tuple[str, ...] = ("iid2", "scanner2")
    methods: tuple[str, ...] = ("centralized", "fedavg")
    seeds: tuple[int, ...] = (0, 1, 2)
    rounds: int = 10
    local_epochs: int = 4
    train_cases: int = 6  # per site (the unequal split scales these by its shares)
    val_cases: int = 2
    test_cases: int = 10
    variant: str = "tiny"
    task: str = "spleen"
    threads: int = 1
    resamples: int = 2000

    @property
    def epochs(self) -> int:
        return self.rounds * self.local_epochs

    def __post_init__(self) -> None:
        for name in self.splits:
            if name not in SPLITS:
                raise ValueError(f"unknown split {name!r}; choose from {', '.join(SPLITS)}")
        for name in self.methods:
            if name not in METHODS:
                raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
        if "centralized" not in self.methods:
            raise ValueError("the plan needs the centralized method: every difference is taken against it")
        for name in self.methods:
            e = METHODS[name].local_epochs
            if e is not None and self.epochs % e:
                raise ValueError(f"method {name}: {self.epochs} total epochs are not a whole number of "
                                 f"{e}-epoch rounds")


# Data -------------------------------------------------------------------------------------------
def _prepare_split(plan: Plan, split: Split, root: Path) -> tuple[Path, dict[str, Path]]:
    """Phantoms for ``split``, dealt to its sites: each holds ``plan.test_cases`` test and ``plan.val_cases``
    validation cases, and its share of training cases (the smallest share gets ``plan.train_cases``)."""
    from fedseg.data.scanner import scanner_split
    from fedseg.data.split import split_dataset
    from fedseg.data.synth import synthesize
    from fedseg.site_config import write_site_config

    shares = list(split.shares or [1.0] * split.sites)
    counts = [round(plan.train_cases * s / min(shares)) + plan.val_cases + plan.test_cases for s in shares]
    source = root / "phantoms"
    if not (source / "dataset.json").is_file():
        synthesize(plan.task, source, sum(counts), seed=1000 + sum(map(ord, split.name)), workers=2)
    lists = root / "lists"
    exact = dict(shares=counts, val_cases=plan.val_cases, test_cases=plan.test_cases)
    data_root = lists if split.mode == "scanner" else source
    # A split already made is reused, never rewritten: another measurement may be training on its
    # files (a site that sees its data change under it leaves the job, as it should).
    done, key = lists / "split_done.json", {"mode": split.mode, "sites": split.sites, **exact}
    made = json.loads(done.read_text()) if done.is_file() else {}
    if made.get("key") == key:
        written = {site: Path(p) for site, p in made["written"].items()}
    else:
        if split.mode == "scanner":
            written = scanner_split(source, split.sites, lists, seed=0, **exact)
        else:
            written = split_dataset(source, split.sites, lists, seed=0, **exact)
        tmp = done.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "written": {site: str(p) for site, p in written.items()}}))
        tmp.replace(done)
    configs = {site: write_site_config(root / "site_configs" / f"{site}.yaml", site,
                                       {plan.task: (data_root, written[site])}, device="cpu",
                                       num_threads=plan.threads, cache_rate=1.0, num_workers=0)
               for site in (f"site-{k}" for k in range(1, split.sites + 1))}
    return data_root, configs


# The pretrained start: phantoms of one phase only (another hospital's protocol), their own seed, and
# the test suite's training budget (tests/conftest.py: 240 steps on 6 cases).
PRETRAIN = {"cases": 6, "phases": "non-contrast", "seed": 4242, "iterations": 240, "threads": 2}


def _pretrained_model(plan: Plan, root: Path) -> Path:
    """A model trained on other phantoms (:data:`PRETRAIN`), once per work folder; every seed starts from it."""
    from fedseg.checkpoint import save_model
    from fedseg.data.synth import synthesize
    from fedseg.engine import Runtime, SegmentationEngine

    # Named by what made it, so a rerun with other settings in the same work folder trains its own.
    made = "_".join(f"{k}{v}" for k, v in PRETRAIN.items() if k != "threads")
    path = root / f"pretrained_start_{plan.task}_{plan.variant}_{made}.pt"
    if path.is_file():
        return path
    source = root / f"pretrain_phantoms_{PRETRAIN['cases']}_{PRETRAIN['seed']}_{PRETRAIN['phases']}"
    if not (source / "dataset.json").is_file():
        synthesize(plan.task, source, PRETRAIN["cases"], seed=PRETRAIN["seed"], workers=2, phases=PRETRAIN["phases"])
    spec = METHODS["fedavg"].spec(plan)
    info = json.loads((source / "dataset.json").read_text())
    items = [{k: str(source / v) for k, v in case.items()} for case in info["training"]]
    engine = SegmentationEngine(spec, Runtime.create("cpu", num_threads=PRETRAIN["threads"]), seed=PRETRAIN["seed"])
    engine.train(engine.train_data(items), iterations=PRETRAIN["iterations"])
    return save_model(path, engine.get_weights(), spec)


def _initial_model(plan: Plan, seed: int, root: Path, method: Method) -> Path:
    """The seeded network every method of this seed starts from (one per network structure), or the
    pretrained model for a method that starts from one."""
    from fedseg.checkpoint import save_seeded_model
    from fedseg.tasks.spec import NETWORK_LEVERS

    if method.start == "pretrained":
        return _pretrained_model(plan, root)
    shape = "".join(f"_{k}-{v}" for k, v in method.recipe if k in NETWORK_LEVERS)
    return save_seeded_model(root / f"initial_seed{seed}{shape}.pt", method.spec(plan), seed)


# Runs -------------------------------------------------------------------------------------------
def _train(plan: Plan, method: Method, seed: int, data_root: Path, configs: dict[str, Path], init: Path,
           out: Path) -> Path:
    """Train one method for one seed; return its final model file (reused if the run is already there)."""
    from fedseg.checkpoint import load_initial_model

    spec = method.spec(plan)
    if method.kind == "centralized":
        final = out / "final_model.pt"
        if not final.is_file():
            from fedseg.engine import Runtime
            from fedseg.runners.local import run_local
            from fedseg.site_config import load_site_config

            sites = [load_site_config(p) for p in configs.values()]
            epochs = max(1, plan.epochs // len(sites)) if method.federated_steps else plan.epochs
            run_local(spec, sites, out, epochs=epochs, val_every=epochs, seed=seed,
                      runtime=Runtime.create("cpu", num_threads=plan.threads), tracking="none",
                      init_weights=load_initial_model(init, spec))
        return final
    from fedseg.flare.jobs import JobSpec
    from fedseg.flare.simulate import simulate

    local_epochs = method.local_epochs or plan.local_epochs
    job = JobSpec(plan.task, algorithm=method.algorithm, variant=plan.variant, num_rounds=plan.epochs // local_epochs,
                  local_epochs=local_epochs, min_clients=len(configs), seed=seed, algorithm_options=method.options,
                  recipe=method.recipe, privacy=method.privacy)
    final = out / "workspace" / job.name / "server" / "simulate_job" / "app_server" / "FL_global_model.pt"
    if not final.is_file():
        simulate(job, n_sites=len(configs), data_dir=data_root, run_dir=out, cases=0, seed=seed,
                 initial_weights=init, site_configs=configs, report=False)
    return final


def _case_means(per_class: dict[str, list]) -> list[float | None]:
    """Mean Dice over classes per case (None where no class of the case has a value)."""
    columns = list(per_class.values())
    out = []
    for values in zip(*columns):
        finite = [v for v in values if v is not None]
        out.append(sum(finite) / len(finite) if finite else None)
    return out


def _score(plan: Plan, method: Method, model: Path, configs: dict[str, Path],
           seed: int) -> dict[str, list[float | None]]:
    from fedseg.engine import Runtime
    from fedseg.site_config import load_site_config
    from fedseg.site_data import open_site_data
    from fedseg.site_eval import score_cases

    spec = method.spec(plan)
    data = [open_site_data(spec, load_site_config(p)) for p in configs.values()]
    per_case = score_cases(spec, {"m": model}, data, Runtime.create("cpu", num_threads=plan.threads), seed=seed)["m"]
    return {site: _case_means(classes) for site, classes in per_case.items()}


def _site_model_kind(method: Method) -> str | None:
    """Which model each site keeps of its own, to be scored beside the global one (None: none)."""
    if method.algorithm == "ditto":
        from fedseg.algorithms.ditto import PERSONAL

        return PERSONAL
    return "local" if method.privacy == "exclude" else None


def _site_models(out: Path, configs: dict[str, Path], spec, kind: str) -> dict[str, Path]:
    """Each site's own model of ``kind`` (Ditto's personalised one, FedBN's local one) as the site
    saved it in the simulator workspace."""
    models = {}
    for site in configs:
        found = sorted((out / "workspace").glob(f"*/{site}/fedseg/{spec.name}_{kind}_model.pt"))
        if len(found) != 1:
            raise RuntimeError(f"{out}: expected one {kind} model of {site}, found {len(found)}")
        models[site] = found[0]
    return models


def _site_model_scores(plan: Plan, method: Method, out: Path, configs: dict[str, Path],
                       seed: int) -> dict[str, dict[str, list[float | None]]]:
    """The sites' own models, per case: each on its own site's test cases (``own``), and each site's
    cases scored by the other sites' models, averaged over them (``others``)."""
    from fedseg.engine import Runtime
    from fedseg.site_config import load_site_config
    from fedseg.site_data import open_site_data
    from fedseg.site_eval import score_cases

    spec = method.spec(plan)
    data = [open_site_data(spec, load_site_config(p)) for p in configs.values()]
    per_case = score_cases(spec, _site_models(out, configs, spec, _site_model_kind(method)), data,
                           Runtime.create("cpu", num_threads=plan.threads), seed=seed)
    means = {m: {site: _case_means(classes) for site, classes in by_site.items()} for m, by_site in per_case.items()}
    own = {site: means[site][site] for site in configs}
    others = {}
    for site in configs:
        columns = [means[m][site] for m in configs if m != site]
        others[site] = [None if any(v is None for v in vals) else sum(vals) / len(vals) for vals in zip(*columns)]
    return {"own": own, "others": others}


def run_plan(plan: Plan, work: Path) -> dict:
    """Run (or reuse) every split x seed x method; return scores and the summary with intervals."""
    work = Path(work).resolve()
    scores: dict[str, dict[str, dict[int, dict[str, list]]]] = {}
    for split_name in plan.splits:
        split = SPLITS[split_name]
        root = work / split_name
        data_root, configs = _prepare_split(plan, split, root)
        scores[split_name] = {}
        for seed in plan.seeds:
            for name in plan.methods:
                method = METHODS[name]
                init = _initial_model(plan, seed, root, method)
                run = root / name / f"seed{seed}"
                # FedBN's server model holds the initial normalization layers (the sites never sent
                # theirs): nobody deploys it, so only the sites' own models are scored.
                if method.privacy != "exclude":
                    cached = run / "scores.json"
                    if cached.is_file():
                        by_site = json.loads(cached.read_text())
                    else:
                        log.warning("quality: %s, seed %d, %s", split_name, seed, name)
                        model = _train(plan, method, seed, data_root, configs, init, run)
                        by_site = _score(plan, method, model, configs, seed)
                        cached.parent.mkdir(parents=True, exist_ok=True)
                        cached.write_text(json.dumps(by_site))
                    scores[split_name].setdefault(name, {})[seed] = by_site
                kind = _site_model_kind(method)
                if kind:  # the sites' own models (Ditto's personalised, FedBN's local ones)
                    cached = run / f"{kind}_scores.json"
                    if not cached.is_file():
                        log.warning("quality: %s, seed %d, %s (%s models)", split_name, seed, name, kind)
                        _train(plan, method, seed, data_root, configs, init, run)  # reuses a finished run
                        cached.write_text(json.dumps(_site_model_scores(plan, method, run, configs, seed)))
                    for view, by_site in json.loads(cached.read_text()).items():
                        scores[split_name].setdefault(f"{name}_{kind}_{view}", {})[seed] = by_site
    return {"plan": asdict(plan), "epochs": plan.epochs, "scores": scores, "summary": summarize(scores, plan)}


def rounds_to_bar(work: Path, plan: Plan, bar: float) -> dict[str, dict[str, dict[int, int | None]]]:
    """Per split, federated method and seed: the first round whose global model reached ``bar``
    validation Dice (the sites' validation cases, as the server aggregates them; None: never). FedBN's
    sites validate the global model with their own normalization layers, so its figure is theirs."""
    from fedseg.flare.results import round_records

    out: dict = {}
    for split in plan.splits:
        for name in plan.methods:
            if METHODS[name].kind != "federated":
                continue
            for seed in plan.seeds:
                jobs = sorted((Path(work) / split / name / f"seed{seed}" / "workspace").glob(
                    "*/server/simulate_job"))
                if len(jobs) != 1:
                    continue
                # The record's own round number: a round without metrics leaves no record.
                first = next((int(r["round"]) for r in round_records(jobs[0])
                              if (d := _val_dice(r)) is not None and d >= bar), None)
                out.setdefault(split, {}).setdefault(name, {})[seed] = first
    return out


def _val_dice(record: dict) -> float | None:
    return next((float(m["value"]) for m in record.get("aggregated_metrics", []) if m.get("name") == "val_dice"), None)


def _pooled(by_seed: dict, sites: list[str] | None = None) -> dict[int, list]:
    """Per seed, the cases of ``sites`` (default: every site) one after the other, in site order."""
    return {int(seed): [v for site in sorted(by_site) if sites is None or site in sites for v in by_site[site]]
            for seed, by_site in by_seed.items()}


def summarize(scores: dict, plan: Plan) -> dict:
    """Per split and method: pooled and per-site intervals, and the paired difference against centralized."""
    out: dict = {}
    for split_name, methods in scores.items():
        central = _pooled(methods["centralized"])
        sites = sorted(next(iter(methods["centralized"].values())))
        rows = {}
        for name, by_seed in methods.items():
            pooled = _pooled(by_seed)
            row = {"pooled": interval(pooled, resamples=plan.resamples).as_json(),
                   "sites": {s: interval(_pooled(by_seed, [s]), resamples=plan.resamples).as_json() for s in sites}}
            if name != "centralized":
                row["minus_centralized"] = paired_difference(pooled, central, resamples=plan.resamples).as_json()
                reference = interval(central, resamples=plan.resamples).mean
                row["share_of_centralized"] = round(row["pooled"]["mean"] / reference, 4) if reference else None
            rows[name] = row
        out[split_name] = rows
    return out


def table(summary: dict) -> str:
    """Markdown: one row per split and method."""
    lines = ["| split | method | pooled Dice [95% CI] | minus centralized [95% CI] | share | per site |",
             "|---|---|---|---|---|---|"]
    for split, rows in summary.items():
        for name, row in rows.items():
            p = row["pooled"]
            d = row.get("minus_centralized")
            diff = f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d else "-"
            share = f"{row['share_of_centralized']:.3f}" if row.get("share_of_centralized") else "-"
            per_site = ", ".join(f"{s} {v['mean']:.3f}" for s, v in row["sites"].items())
            lines.append(f"| {split} | {name} | {p['mean']:.3f} [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}] | {diff} "
                         f"| {share} | {per_site} |")
    return "\n".join(lines)


# The benchmark suite's section (python -m bench --only quality) -------------------------------
def plan_for(settings) -> Plan:
    """The plan ``make bench`` runs: the smallest that exercises every piece (its Dice means nothing);
    ``--quality-schedule`` and ``python -m bench.quality`` run meaningful ones."""
    return Plan(splits=("scanner2",), methods=("centralized", "fedavg"), seeds=(0, 1),
                rounds=settings.quality_rounds, local_epochs=settings.quality_local_epochs, train_cases=2,
                val_cases=1, test_cases=2, variant=settings.variant, threads=1, resamples=200)


def run(settings, work: Path) -> dict:
    result = run_plan(plan_for(settings), Path(work) / "quality")
    result.pop("scores")
    return result


def rows(result: dict) -> list[list]:
    out = []
    for split, methods in result["summary"].items():
        for name, row in methods.items():
            p, d = row["pooled"], row.get("minus_centralized")
            out.append([f"quality ({split}): {name}", f"Dice {p['mean']:.3f} [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}]",
                        f"minus centralized {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d else "",
                        f"{result['epochs']} epochs, seeds {p['seeds']}, cases {p['cases']}"])
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.splitlines()[0])
    p.add_argument("--splits", nargs="+", default=list(Plan.splits), choices=list(SPLITS))
    p.add_argument("--methods", nargs="+", default=list(Plan.methods), choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(Plan.seeds))
    p.add_argument("--rounds", type=int, default=Plan.rounds)
    p.add_argument("--local-epochs", type=int, default=Plan.local_epochs)
    p.add_argument("--test-cases", type=int, default=Plan.test_cases)
    p.add_argument("--work", default="runs/quality", help="runs and scores are kept and reused here")
    p.add_argument("--out", default=None, help="JSON (default WORK/quality.json)")
    p.add_argument("--bar", type=float, default=0.6,
                   help="also report the first round whose global validation Dice reaches this (default %(default)s)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    plan = Plan(splits=tuple(a.splits), methods=tuple(a.methods), seeds=tuple(a.seeds), rounds=a.rounds,
                local_epochs=a.local_epochs, test_cases=a.test_cases)
    result = run_plan(plan, Path(a.work))
    result["rounds_to_bar"] = {"bar": a.bar, "rounds": rounds_to_bar(Path(a.work), plan, a.bar)}
    out = Path(a.out or Path(a.work) / "quality.json")
    out.write_text(json.dumps(result, indent=2))
    print(table(result["summary"]))
    for split, methods in result["rounds_to_bar"]["rounds"].items():
        shown = "; ".join(f"{m} {', '.join('-' if r is None else str(r) for r in by_seed.values())}"
                          for m, by_seed in methods.items())
        print(f"{split}: first round with global validation Dice >= {a.bar} (round 0 = the start), per seed: {shown}")
    print(f"\n{plan.epochs} epochs per method; JSON in {out}")
    return 0


if __name__ == "__main__":
    import sys

    if __package__ in (None, ""):
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
