"""``fedseg tune --federated``: a Ray Tune search over FL settings, every trial a real NVFlare job.

A trial is one job run exactly as ``fedseg simulate`` runs it (NVFlare's ``SimEnv`` in a bounded
child process, :func:`fedseg.flare.simulate.simulate`) on the same sites and from the same
seeded initial model, so trials differ only by their settings: the algorithm, each algorithm's
declared options (FedProx's mu, FedOpt's server learning rate and momentum, ...), local epochs
per round and the recipe levers in :data:`SEARCHED_LEVERS` (augmentation, and batch: half the
volumes per optimizer step, which on heterogeneous sites is the lever that closed most of FedAvg's gap
in ``bench.quality``). Every trial gets the same total training epochs; a round
of ``local_epochs`` epochs then counts that many, and ASHA compares trials at equal compute.

What a trial reports after each round is the global validation Dice the sites sent with their
updates (the incoming global model, averaged as FedAvg weighs the sites; the figure NVFlare
keeps the best global model by). The model after the last round is scored once the job ends, on
the same validation cases with the same weights: the simulator's machine holds every simulated
site's data, as it does for ``fedseg simulate``'s per-case table; nothing is sent anywhere. Test
cases are never looked at. The first trial is the committed job's own setting (FedAvg, the
task's local epochs, the card's recipe), so the search says whether it beat the default.

A trial that ASHA ends early is stopped by its ``cleanup``: the simulator and every process it
started are stopped by the process IDs recorded while it ran (:mod:`fedseg.procs`).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fedseg.errors import ConfigError, FedsegError
from fedseg.ray import require_ray
from fedseg.results import write_json

log = logging.getLogger("fedseg")

# Searched by default. Ditto is left out: what it is for is its personalised models, and a search
# on the global model's Dice would not rank it fairly (``--algorithms ditto`` still takes it).
ALGORITHMS = ("fedavg", "fedprox", "fedopt", "scaffold")
LOCAL_EPOCH_CHOICES = (1, 2, 3, 4, 6, 8, 12)
OPTION_SPAN = 3.0  # an algorithm option is searched from default / 3 to default * 3, within its range
# Recipe levers (fedseg.tasks.spec.LEVERS) a trial may change. ``norm`` is left out: it changes the
# network, and the seeded start every trial shares is one network.
SEARCHED_LEVERS = ("augment", "batch")


@dataclass(frozen=True)
class Federation:
    """What every trial shares: the task, the sites and the seeded start."""

    task: str
    variant: str
    site_configs: dict[str, str]  # site-k -> YAML (all in one folder)
    data_dir: str
    initial_model: str
    epochs: int  # total training epochs of a trial
    seed: int
    trials_dir: str


def local_epoch_choices(epochs: int) -> list[int]:
    """Epochs per round that divide the trial's ``epochs`` into at least two rounds."""
    return [e for e in LOCAL_EPOCH_CHOICES if epochs % e == 0 and epochs // e >= 2]


def search_space(algorithms: tuple[str, ...], epochs: int) -> dict:
    """The Tune search space: algorithm, every option each algorithm declares, local epochs, recipe levers."""
    from ray import tune

    from fedseg.algorithms import get_algorithm
    from fedseg.tasks.spec import LEVERS

    space = {"algorithm": tune.choice(list(algorithms)), "local_epochs": tune.choice(local_epoch_choices(epochs)),
             **{lever: tune.choice(list(LEVERS[lever])) for lever in SEARCHED_LEVERS}}
    for name in algorithms:
        for option in get_algorithm(name).options:
            space[f"{name}.{option.name}"] = _domain(option)
    return space


def _domain(option):
    """An option's search range: from default / OPTION_SPAN to default * OPTION_SPAN, within its own range."""
    from ray import tune

    low = max(option.low, option.default / OPTION_SPAN)
    high = min(option.high, option.default * OPTION_SPAN) if option.default > 0 else option.high
    if option.integer:
        return tune.randint(int(max(low, 1)), int(high) + 1)
    return tune.loguniform(low, high) if low > 0 else tune.uniform(option.low, high)


def card_config(task: str, algorithms: tuple[str, ...], epochs: int) -> dict:
    """The committed job's setting: FedAvg, the task's local epochs (or the nearest that fits), the card's recipe."""
    from fedseg.algorithms import get_algorithm
    from fedseg.tasks import task_schedule
    from fedseg.tasks.spec import DEFAULTS

    choices = local_epoch_choices(epochs)
    wanted = task_schedule(task).local_epochs
    config = {"algorithm": "fedavg" if "fedavg" in algorithms else algorithms[0],
              "local_epochs": max([e for e in choices if e <= wanted] or choices[:1]),
              **{lever: DEFAULTS[lever] for lever in SEARCHED_LEVERS}}
    for name in algorithms:
        for option in get_algorithm(name).options:
            config[f"{name}.{option.name}"] = option.default
    return config


def trial_setting(config: dict) -> dict:
    """What a trial ran with: its algorithm, that algorithm's options, local epochs, recipe levers."""
    from fedseg.algorithms import get_algorithm

    algorithm = config["algorithm"]
    options = {o.name: (int if o.integer else float)(config[f"{algorithm}.{o.name}"])
               for o in get_algorithm(algorithm).options}
    return {"algorithm": algorithm, "options": options, "local_epochs": int(config["local_epochs"]),
            **{lever: config[lever] for lever in SEARCHED_LEVERS}}


def trial_job(fed: Federation, setting: dict):
    """The NVFlare job of one trial."""
    from fedseg.flare.jobs import JobSpec

    le = setting["local_epochs"]
    return JobSpec(fed.task, algorithm=setting["algorithm"], variant=fed.variant, num_rounds=fed.epochs // le,
                   local_epochs=le, min_clients=len(fed.site_configs), seed=fed.seed,
                   algorithm_options=tuple(setting["options"].items()),
                   recipe=tuple((lever, setting[lever]) for lever in SEARCHED_LEVERS))


def global_val_dice(record: dict) -> float | None:
    """The incoming global model's validation Dice of one round record, as the server aggregated it."""
    for metric in record.get("aggregated_metrics", []):
        if metric.get("name") == "val_dice" and isinstance(metric.get("value"), (int, float)):
            return float(metric["value"])
    return None


def final_val_dice(fed: Federation, model: Path) -> float:
    """The final global model's validation Dice, sites weighted by training cases as FedAvg weighs them."""
    from fedseg.checkpoint import load_initial_model
    from fedseg.engine import Runtime, SegmentationEngine
    from fedseg.site_config import load_site_config
    from fedseg.site_data import open_site_data
    from fedseg.tasks import get_task

    spec = get_task(fed.task, fed.variant)
    runtime = Runtime.create("cpu", num_threads=1)
    weights = load_initial_model(model, spec)
    total, weight_sum = 0.0, 0.0
    for path in fed.site_configs.values():
        data = open_site_data(spec, load_site_config(Path(path)))
        engine = SegmentationEngine(spec, runtime, class_names=data.class_names, seed=fed.seed)
        engine.set_weights(weights)
        dice = engine.evaluate(engine.eval_data(data.items("validation"))).mean
        n_train = len(data.items("training"))
        if math.isfinite(dice) and n_train:
            total, weight_sum = total + dice * n_train, weight_sum + n_train
    return total / weight_sum if weight_sum else 0.0


def _trainable():
    """The Tune trainable class (built on first use: importing this module does not import ray)."""
    from ray import tune

    from fedseg.flare.results import round_records
    from fedseg.flare.simulate import job_bounds, simulate

    class FederatedTrial(tune.Trainable):
        """One NVFlare job; each ``step`` waits (bounded) for its next round and reports that round."""

        def setup(self, config: dict, fed: Federation) -> None:
            logging.getLogger("fedseg").setLevel(logging.WARNING)  # Tune prints the trial table
            self.fed, self.setting = fed, trial_setting(config)
            self.job = trial_job(fed, self.setting)
            self.run_dir = Path(fed.trials_dir) / self.trial_id
            self.workspace = self.run_dir / "workspace" / self.job.name
            self.idle_s, self.total_s = job_bounds(self.job)
            self.started, self.last_round, self.error = time.monotonic(), 0, None
            self.stop_event = threading.Event()
            self.thread = threading.Thread(target=self._simulate, daemon=True, name="fedseg-trial-simulator")
            self.thread.start()

        def _simulate(self) -> None:
            try:
                simulate(self.job, n_sites=len(self.fed.site_configs), data_dir=Path(self.fed.data_dir),
                         run_dir=self.run_dir, cases=0, seed=self.fed.seed,
                         initial_weights=Path(self.fed.initial_model),
                         site_configs={k: Path(v) for k, v in self.fed.site_configs.items()}, stop=self.stop_event,
                         report=False)
            except Exception as exc:  # reported by step(): a failed job is a failed trial, with its reason
                self.error = exc

        def _report(self, val_dice: float, round_: int) -> dict:
            return {"val_dice": val_dice, "epochs": round_ * self.job.local_epochs, "round": round_}

        def step(self) -> dict:
            waited_since = time.monotonic()
            while True:
                # Round 0's record scores the initial model, the same for every trial: skipped.
                for record in round_records(self.workspace / "server" / "simulate_job", running=True):
                    dice = global_val_dice(record)
                    if record.get("round", 0) > self.last_round and dice is not None:
                        self.last_round = record["round"]
                        return self._report(dice, self.last_round)
                if not self.thread.is_alive():
                    return self._final()
                now = time.monotonic()
                if now - waited_since > self.idle_s or now - self.started > self.total_s:
                    raise FedsegError(f"trial {self.trial_id}: no round finished in {now - waited_since:.0f} s")
                time.sleep(1.0)

        def _final(self) -> dict:
            model = self.workspace / "server" / "simulate_job" / "app_server" / "FL_global_model.pt"
            if self.error is not None and not model.is_file():
                raise FedsegError(f"trial {self.trial_id}: the job failed: {self.error}") from self.error
            dice = final_val_dice(self.fed, model)
            return {**self._report(dice, self.job.num_rounds), "done": True}

        def save_checkpoint(self, checkpoint_dir: str) -> dict:
            # The job's own checkpoints are the server's global models; Tune only learns the round.
            return {"round": self.last_round, "run_dir": str(self.run_dir)}

        def load_checkpoint(self, checkpoint: dict) -> None:
            raise FedsegError(f"trial {self.trial_id}: a federated trial cannot be restored by Tune; resume the "
                              f"job itself with fedseg simulate --resume {checkpoint.get('run_dir')}")

        def cleanup(self) -> None:
            self.stop_event.set()  # a trial ASHA ended: the simulator and its processes are stopped
            self.thread.join(timeout=120)

    return FederatedTrial


def run_federated_tune(task: str, variant: str, site_configs: dict[str, Path], data_dir: Path, out_dir: Path, *,
                       trials: int, epochs: int, grace_epochs: int = 1, algorithms: tuple[str, ...] = ALGORITHMS,
                       seed: int = 0, address: str | None = None) -> dict:
    """Search ``trials`` FL settings of ``epochs`` total epochs each; write and return ``tune_results.json``."""
    from fedseg.algorithms import algorithm_names
    from fedseg.checkpoint import save_seeded_model
    from fedseg.ray.tune import check_budget
    from fedseg.tasks import get_task

    start = time.perf_counter()
    check_budget(trials, epochs, grace_epochs, least_epochs=2)  # two rounds at least: one to report mid-way
    unknown = sorted(set(algorithms) - set(algorithm_names()))
    if unknown or not algorithms:
        raise ConfigError(f"--algorithms: unknown {', '.join(unknown) or '(none given)'}; "
                          f"choose from {', '.join(algorithm_names())}")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    initial = save_seeded_model(out_dir / f"initial_seed{seed}.pt", get_task(task, variant), seed)
    fed = Federation(task, variant, {k: str(Path(v).resolve()) for k, v in sorted(site_configs.items())},
                     str(Path(data_dir).resolve()), str(initial), epochs, seed, str(out_dir / "trials"))
    require_ray()
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from fedseg.ray.cluster import RayCluster

    card = card_config(task, algorithms, epochs)
    with RayCluster(address, out_dir) as cluster:
        # The simulator runs the sites in parallel: a trial takes a CPU per site (at most the cluster's).
        cpus = max(1, min(len(site_configs), int(cluster.resources().get("CPU", 1))))
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_trainable(), fed=fed), {"cpu": cpus}),
            param_space=search_space(algorithms, epochs),
            tune_config=tune.TuneConfig(
                metric="val_dice", mode="max", num_samples=trials,
                scheduler=ASHAScheduler(time_attr="epochs", max_t=epochs, grace_period=grace_epochs,
                                        reduction_factor=2),
                search_alg=BasicVariantGenerator(points_to_evaluate=[card], random_state=seed)),
            run_config=tune.RunConfig(name=f"fedtune-{time.strftime('%Y%m%d-%H%M%S')}",
                                      storage_path=str(out_dir / "tune"), verbose=0,
                                      checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False)),
        )
        grid = tuner.fit()
    rows = [_row(i, r, epochs, Path(fed.trials_dir)) for i, r in enumerate(grid)]
    ok = [t for t in rows if t["rounds"]]
    if not ok:
        raise ConfigError(f"no federated trial finished a round; see the trial errors in {out_dir / 'tune'}")
    best = max(ok, key=lambda t: t["best_val_dice"])
    body = {"task": task, "variant": variant, "federated": True, "sites": sorted(site_configs), "trials": rows,
            "best": {"setting": best["setting"], "val_dice": best["best_val_dice"], "epochs": best["best_epochs"]},
            "card": trial_setting(card), "epochs": epochs, "grace_epochs": grace_epochs, "seed": seed,
            "algorithms": list(algorithms), "scheduler": "ASHA on training epochs (reduction factor 2)",
            "metric": "global validation Dice per round (the sites' figures, FedAvg-weighted)",
            "wall_time_s": round(time.perf_counter() - start, 1)}
    write_json(out_dir / "tune_results.json", body)
    return body


def _row(i: int, result, epochs: int, trials_dir: Path) -> dict:
    setting = trial_setting(result.config)
    history = result.metrics_dataframe
    if result.error is not None or history is None or history.empty:
        return {"trial": str(i), "setting": setting, "rounds": 0, "epochs": 0, "best_val_dice": 0.0,
                "best_epochs": 0, "stopped_early": False,
                "error": str(result.error).splitlines()[0][:200] if result.error else "no round reported"}
    best = history.loc[history["val_dice"].idxmax()]
    trained = int(history["epochs"].max())
    return {"trial": str(i), "setting": setting, "run_dir": str(trials_dir / str(history["trial_id"].iloc[0])),
            "rounds": int(history["round"].max()), "epochs": trained,
            "best_val_dice": float(best["val_dice"]), "best_epochs": int(best["epochs"]),
            "stopped_early": trained < epochs,
            "val_dice_by_round": [round(float(v), 4) for v in history["val_dice"]],
            "epochs_by_round": [int(v) for v in history["epochs"]]}


def table(body: dict) -> str:
    """A Markdown table of the trials, best first."""
    head = ["trial", "algorithm", "options", "local epochs", *SEARCHED_LEVERS, "epochs", "best val Dice", "at epoch"]
    rows = [head, ["---"] * len(head)]
    for t in sorted(body["trials"], key=lambda t: -t["best_val_dice"]):
        s = t["setting"]
        rows.append([t["trial"], s["algorithm"], ", ".join(f"{k} {v:.3g}" for k, v in s["options"].items()) or "-",
                     str(s["local_epochs"]), *(s[lever] for lever in SEARCHED_LEVERS),
                     f"{t['epochs']}{' (stopped)' if t['stopped_early'] else ''}", f"{t['best_val_dice']:.4f}",
                     str(t["best_epochs"])])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows)
