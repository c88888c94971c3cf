"""NVFlare job folders, generated from one place.

A job is wiring only: which task and variant, how many rounds and local epochs, which algorithm.
Network, transforms and optimizer come from the task spec at run time, so nothing about the model
is written into the job except its task name. ``fedseg jobs export`` regenerates ``jobs/``; a test
checks that regenerating changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from fedseg.algorithms import algorithm_names, get_algorithm
from fedseg.algorithms.base import PRIVACY
from fedseg.errors import CheckpointError, FedsegError
from fedseg.flare.constants import HEARTBEAT_INTERVAL_S, KEY_METRIC
from fedseg.networks import NORM_LAYERS, TaskNetwork
from fedseg.tasks import get_task, task_names, task_schedule
from fedseg.tasks.spec import NETWORK_LEVERS

log = logging.getLogger("fedseg")

CLIENT_SCRIPT = Path(__file__).with_name("fedseg_client.py")
# The FL algorithms (fedseg.algorithms): FedAvg, FedProx, FedOpt, SCAFFOLD, Ditto.
ALGORITHMS = algorithm_names()


@dataclass(frozen=True)
class Deadlines:
    """How long the server waits, in seconds (see fedseg.flare.controller and README "Lost sites").

    ``round``: every training round ends by then. ``grace``: once ``min_clients`` updates are in, the
    longest wait for the rest. ``heartbeat``: a site silent that long is treated as lost.
    """

    round: int
    grace: int
    heartbeat: int


# Chosen from measured round times, with a wide margin for slow or busy machines: a tiny round takes
# about 10-15 s on 2 CPU cores (the demo: 6 local epochs), so 900 s is ~60x that and the grace ~10x;
# a card-sized round on one GPU takes minutes (and hours on a CPU), hence 4 h and 30 min. The heartbeat
# timeout is 12 missed beats (tiny) or 24 (full, whose sites may stall longer on I/O).
DEADLINES = {"tiny": Deadlines(round=900, grace=120, heartbeat=60),
             "full": Deadlines(round=4 * 3600, grace=1800, heartbeat=120)}

# NVFlare's fixed waits, paid every round: how long a site waits before asking for its next task
# (the server's task_request_interval, 2 s by default) and how often the controller looks at its
# standing task (task_check_period, 0.5 s). Tiny rounds last seconds, so these dominate them; a
# card-sized round lasts minutes and a large consortium should not poll the server 5 times a second.
POLLING = {"tiny": (0.05, 0.05), "full": (1.0, 0.5)}


@dataclass(frozen=True)
class JobSpec:
    """Everything a job folder encodes."""

    task: str
    algorithm: str = "fedavg"
    variant: str = "tiny"
    num_rounds: int = 20
    local_epochs: int = 6
    min_clients: int = 2
    seed: int = 0
    # "exclude": normalization layers never leave a site (FedBN); "percentile": NVFlare's
    # PercentilePrivacy on the weight differences.
    privacy: str = "none"
    # Restart: the server-side path of a global model to start from, and the round it resumes at.
    initial_model: str | None = None
    start_round: int = 0
    # GPUs each site must offer for the job to be scheduled (meta.json resource_spec), with per-site
    # overrides as (site, gpus) pairs. A CPU-only POC still schedules them: see fedseg.flare.poc.
    gpus: int = 1
    site_gpus: tuple[tuple[str, int], ...] = ()
    # The algorithm's options as (name, value) pairs, e.g. (("mu", 0.05),) for FedProx; the rest take
    # the defaults the algorithm declares (fedseg.algorithms.<name>).
    algorithm_options: tuple[tuple[str, float], ...] = ()
    # Recipe levers (fedseg.tasks.spec.LEVERS) as (name, choice) pairs, e.g. (("augment", "scanner"),).
    recipe: tuple[tuple[str, str], ...] = ()
    # Seconds; None: the variant's default in DEADLINES.
    round_timeout: int | None = None
    straggler_grace: int | None = None
    heartbeat_timeout: int | None = None
    # Where the server sends the sites' metrics: NVFlare's add_experiment_tracking receiver
    # (tensorboard: <server job>/tb_events; mlflow: <server job result>/mlflow.db unless configured).
    tracking: str = "tensorboard"

    def __post_init__(self) -> None:
        # Pairs may come back from run.json as lists; keep them hashable and comparable.
        object.__setattr__(self, "algorithm_options", tuple((str(k), v) for k, v in self.algorithm_options))
        object.__setattr__(self, "recipe", get_task(self.task, "full").with_levers(dict(self.recipe)).levers)
        self.spec  # refuses unknown tasks, variants and levers early
        object.__setattr__(self, "site_gpus", tuple((str(k), n) for k, n in self.site_gpus))
        if self.privacy not in PRIVACY:
            raise ValueError(f"unknown privacy option {self.privacy!r}; choose one of {', '.join(PRIVACY)}")
        for what in ("num_rounds", "local_epochs", "min_clients"):
            if getattr(self, what) < 1:
                raise ValueError(f"{what} must be at least 1, got {getattr(self, what)}")
        if self.gpus < 0 or any(n < 0 for _, n in self.site_gpus):
            raise ValueError("GPU counts cannot be negative")
        for what in ("round_timeout", "heartbeat_timeout"):
            if getattr(self, what) is not None and getattr(self, what) < 1:
                raise ValueError(f"{what} must be at least 1 second, got {getattr(self, what)}")
        if self.straggler_grace is not None and self.straggler_grace < 0:
            raise ValueError(f"straggler_grace cannot be negative, got {self.straggler_grace}")
        get_algorithm(self.algorithm).check(self)  # unknown algorithms, their options and what they support
        if self.tracking not in ("tensorboard", "mlflow"):
            raise ValueError(f"unknown tracking {self.tracking!r}; choose tensorboard or mlflow")
        if self.initial_model is not None and not Path(self.initial_model).is_absolute():
            raise ValueError(f"initial_model must be an absolute path on the server, got {self.initial_model!r}")

    @property
    def spec(self):
        return get_task(self.task, self.variant, levers=dict(self.recipe))

    @property
    def network_args(self) -> dict:
        """``fedseg.networks.TaskNetwork``'s arguments: the task, the variant and any structural lever."""
        structural = {k: v for k, v in self.recipe if k in NETWORK_LEVERS}
        return {"task": self.task, "variant": self.variant, **structural}

    @property
    def deadlines(self) -> Deadlines:
        """The job's waits: the variant's defaults, with this job's overrides."""
        default = DEADLINES[self.variant]
        return Deadlines(round=self.round_timeout or default.round,
                         grace=default.grace if self.straggler_grace is None else self.straggler_grace,
                         heartbeat=self.heartbeat_timeout or default.heartbeat)

    @property
    def name(self) -> str:
        suffix = "" if self.variant == "tiny" else f"_{self.variant}"
        suffix += "" if self.privacy == "none" else f"_{self.privacy}"
        suffix += "".join(f"_{k}-{v}" for k, v in self.recipe)
        suffix += f"_from_round{self.start_round}" if self.start_round else ""
        return f"{self.task}_{self.algorithm}{suffix}"

    @property
    def train_args(self) -> str:
        args = f"--task {self.task} --variant {self.variant} --local-epochs {self.local_epochs} --seed {self.seed}"
        if self.privacy == "exclude":
            args += f" --keep-local {NORM_LAYERS}"
        args += "".join(f" --recipe {k}={v}" for k, v in self.recipe)
        return args + get_algorithm(self.algorithm).client_args(self)

    @property
    def resource_spec(self) -> dict:
        """NVFlare ``resource_spec``: a default for every site, then per-site overrides.

        Only portable keys: NVFlare refuses per-GPU memory under ``@default``.
        """
        spec = {"@default": {"num_of_gpus": self.gpus}}
        spec.update({site: {"num_of_gpus": n} for site, n in self.site_gpus})
        return spec

    def with_overrides(self, **changes) -> "JobSpec":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# The committed jobs: CPU-sized demos that run unchanged under `nvflare simulator`.
def _task_job(task: str, algorithm: str = "fedavg") -> JobSpec:
    schedule = task_schedule(task)
    return JobSpec(task, algorithm=algorithm, num_rounds=schedule.num_rounds, local_epochs=schedule.local_epochs)


# The algorithms for heterogeneous sites are committed for this task, on its schedule.
ALGORITHM_TASK = "spleen"
# Every task's FedAvg job on its own schedule (from its task module), then the other algorithms'.
COMMITTED: tuple[JobSpec, ...] = (
    *(_task_job(task) for task in task_names()),
    *(_task_job(ALGORITHM_TASK, name) for name in algorithm_names() if name != "fedavg"),
)


def job_for(task: str, algorithm: str = "fedavg") -> JobSpec:
    """The committed job for ``task`` (its rounds and epochs), run with ``algorithm``."""
    return _task_job(task, algorithm)


def committed_job(name: str) -> JobSpec:
    for job in COMMITTED:
        if job.name == name:
            return job
    raise ValueError(f"no committed job {name!r}; known: {', '.join(j.name for j in COMMITTED)}")


def _recipe_class(job: JobSpec, installed_client: bool):
    """NVFlare's PyTorch FedAvg recipe with the algorithm's controller (fedseg's consortium rules) in place.

    Every algorithm's controller is a ModelController on FedAvg's round loop (FedOpt's too, instead of
    ``FedOptRecipe``'s ScatterAndGather; SCAFFOLD's instead of NVFlare's blocking ``Scaffold``), so that
    all share the round deadlines, lost-site handling and resume of :mod:`fedseg.flare.controller`.
    """
    from nvflare.app_opt.pt.recipes import FedAvgRecipe

    algorithm = get_algorithm(job.algorithm)
    deadlines = job.deadlines

    class ConsortiumFedAvgRecipe(FedAvgRecipe):
        def __init__(self, *args, start_round: int = 0, **kwargs):
            self.start_round = start_round
            super().__init__(*args, **kwargs)

        def _create_client_runner(self, site_config):
            if not installed_client:
                return super()._create_client_runner(site_config)
            from fedseg.flare.executor import InstalledClientRunner

            return InstalledClientRunner(self.train_args, self.params_transfer_type)

        def _create_controller(self, persistor_id, model_params, model_aggregator):
            return algorithm.controller(
                job,
                min_clients=self.min_clients,
                task_check_period=POLLING[job.variant][1],
                round_timeout=deadlines.round,
                straggler_grace=deadlines.grace,
                num_rounds=self.num_rounds,
                start_round=self.start_round,
                persistor_id=persistor_id,
                model=model_params,
                save_filename=self.save_filename,
                aggregator=model_aggregator,
                stop_cond=self.stop_cond,
                patience=self.patience,
                task_name="train",
                exclude_vars=self.exclude_vars,
                aggregation_weights=self.aggregation_weights,
                memory_gc_rounds=self.server_memory_gc_rounds,
                enable_tensor_disk_offload=self.enable_tensor_disk_offload,
            )

    return ConsortiumFedAvgRecipe


def build_recipe(job: JobSpec, client_script: str | None = None, initial_ckpt: str | None = None):
    """The NVFlare recipe for ``job`` (FedAvg with best-model selection and cross-site evaluation).

    Without ``client_script`` the sites run the fedseg client they installed and the job ships no
    code (not BYOC). A ``client_script`` is shipped in ``app/custom/`` instead; it is resolved
    against the working directory when the recipe is exported, as is a relative ``initial_ckpt``
    (shipped in the server app's ``custom/``; by default the job's ``initial_model`` server path).
    """
    from nvflare.apis.job_def import JobMetaKey
    from nvflare.app_common.filters import ExcludeVars, PercentilePrivacy
    from nvflare.client.config import TransferType
    from nvflare.recipe import add_experiment_tracking, set_recipe_meta

    from fedseg.flare.cross_site import ConsortiumCrossSiteEval
    from fedseg.flare.guard import UpdateGuard
    from fedseg.flare.liveness import LIVENESS_ID, SiteHeartbeat, SiteLiveness
    from fedseg.flare.recipe_ext import (LOCATOR_ID, add_client_component, add_cross_site_evaluation,
                                         add_server_component, installed_packages)

    model = {"class_path": "fedseg.networks.TaskNetwork", "args": job.network_args}
    recipe = _recipe_class(job, installed_client=client_script is None)(
        name=job.name,
        model=model,
        initial_ckpt=initial_ckpt or job.initial_model,
        start_round=job.start_round,
        min_clients=job.min_clients,
        num_rounds=job.num_rounds,
        train_script=client_script or CLIENT_SCRIPT.name,
        train_args=job.train_args,
        key_metric=KEY_METRIC,
        key_metric_mode="max",
        # FedOpt's server optimizer and percentile privacy act on weight differences, which the Client
        # API then computes for us.
        params_transfer_type=getattr(TransferType, get_algorithm(job.algorithm).transfer_type(job)),
    )
    # NVFlare's cross-site evaluation with fedseg's bounded, lost-site-aware controller (one model's
    # validation at one site takes less than a training round).
    deadlines = job.deadlines
    add_cross_site_evaluation(recipe, ConsortiumCrossSiteEval(
        model_locator_id=LOCATOR_ID, submit_model_timeout=deadlines.round, validation_timeout=deadlines.round,
        wait_for_clients_timeout=deadlines.heartbeat))
    recipe.add_server_config({"server": {"task_request_interval": POLLING[job.variant][0]}})
    add_server_component(recipe, SiteLiveness(heartbeat_timeout=deadlines.heartbeat), LIVENESS_ID)
    add_client_component(recipe, SiteHeartbeat(interval=HEARTBEAT_INTERVAL_S), "fedseg_heartbeat")
    # Sites stream loss, learning rate and per-class Dice; the server writes them (TensorBoard or MLflow).
    add_experiment_tracking(recipe, job.tracking)
    set_recipe_meta(recipe, JobMetaKey.RESOURCE_SPEC, job.resource_spec)
    recipe.add_server_input_filter(UpdateGuard(algorithm=job.algorithm), tasks=["train"])
    if job.privacy == "exclude":
        # Named one by one (ExcludeVars' regex form cannot be exported), which also makes the job an
        # auditable list of what never leaves a site.
        kept = [k for k in TaskNetwork(**job.network_args).state_dict() if re.search(NORM_LAYERS, k)]
        recipe.add_client_output_filter(ExcludeVars(exclude_vars=kept), tasks=["train", "submit_model"])
    elif job.privacy == "percentile":
        recipe.add_client_output_filter(PercentilePrivacy(percentile=10, gamma=0.01), tasks=["train"])
    # fedseg is installed where the job runs (or bundled whole, see export_job): tell the exporter
    # not to copy the source files of fedseg components into app/custom.
    installed_packages(recipe, ["fedseg"])
    return recipe


SHIPPED_INITIAL_MODEL = "fedseg_initial_model.pt"


@contextlib.contextmanager
def staged_recipe(job: JobSpec, client_script: Path | None = None, initial_weights: Path | None = None):
    """The recipe for ``job``, built in a fresh working folder holding at most the client stub and the
    starting model; the folder (and the working directory) is left when the block ends.

    NVFlare then records the script by its bare name and copies no fedseg modules next to it, so the
    job stays machine-independent. ``initial_weights`` (a fedseg or NVFlare model file, or a MONAI
    bundle that fits the task) is checked first and shipped as the job's starting global model.
    """
    initial = None
    if initial_weights is not None:
        from fedseg.checkpoint import load_initial_model

        initial = load_initial_model(Path(initial_weights), job.spec)
    shipped = Path(client_script).resolve() if client_script else None
    with tempfile.TemporaryDirectory() as tmp, _working_dir(Path(tmp)):
        if shipped is not None:
            shutil.copyfile(shipped, shipped.name)
        if initial is not None:
            from fedseg.checkpoint import save_nvflare_checkpoint

            save_nvflare_checkpoint(Path(SHIPPED_INITIAL_MODEL), initial)
        yield build_recipe(job, shipped.name if shipped else None, SHIPPED_INITIAL_MODEL if initial is not None else None)


def export_job(job: JobSpec, out_root: Path, client_script: Path | None = None, *, bundle_code: bool = False,
               initial_weights: Path | None = None) -> Path:
    """Write ``out_root/<job.name>/`` (replacing an older export) and return its path.

    By default the job is thin: configuration only, the sites run the fedseg they installed, and
    NVFlare does not treat it as BYOC. ``client_script`` ships an entry point in ``app/custom/``
    instead (tests swap in fault injectors). ``bundle_code`` ships the whole fedseg package there
    too, so that the server and sites need nvflare, torch and MONAI but not fedseg (NVFlare's BYOC).
    ``initial_weights`` (a fedseg or NVFlare model file, or a MONAI bundle that fits the task) is
    checked and shipped in the server app as the job's starting global model; anything in an app's
    ``custom/`` folder makes NVFlare treat the job as BYOC, so a site that forbids BYOC puts the
    file on the server instead and exports with ``initial_model`` set to its path there.
    """
    out_root = Path(out_root).resolve()
    target = out_root / job.name
    script = client_script or (CLIENT_SCRIPT if bundle_code else None)
    with staged_recipe(job, script, initial_weights) as recipe:  # a model that does not fit is refused first
        if target.exists():
            shutil.rmtree(target)
        out_root.mkdir(parents=True, exist_ok=True)
        recipe.export(str(out_root))
    if bundle_code:
        package = Path(__file__).resolve().parents[1]
        shutil.copytree(package, target / "app" / "custom" / "fedseg",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


@contextlib.contextmanager
def _working_dir(path: Path):
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def export_all(out_root: Path, jobs: tuple[JobSpec, ...] = COMMITTED) -> list[Path]:
    return [export_job(job, out_root) for job in jobs]


def saved_round(model_file: Path) -> int:
    """The last aggregated round recorded in an NVFlare global-model file (FL_global_model.pt)."""
    from fedseg.checkpoint import read_model_file

    meta = read_model_file(model_file).get("meta_props") or {}
    if not isinstance(meta.get("current_round"), int):
        raise CheckpointError(f"{model_file}: records no round (not a global model saved by an NVFlare server)")
    return meta["current_round"]


def resumed(job: JobSpec, model_file: Path, server_path: str | None = None) -> JobSpec:
    """The rest of ``job`` after the round saved in ``model_file``, starting from that model.

    ``server_path`` is where the server will find the file (defaults to ``model_file`` itself).
    """
    done = saved_round(model_file) + 1
    total = job.start_round + job.num_rounds
    if done >= total:
        raise FedsegError(f"{model_file}: saved after round {done - 1}; the job's {total} rounds are all done")
    note = get_algorithm(job.algorithm).resume_note
    if note:
        log.warning("fedseg: %s resumes at round %d: %s", job.algorithm, done, note)
    return replace(job, initial_model=server_path or str(Path(model_file).resolve()), start_round=done,
                   num_rounds=total - done)
