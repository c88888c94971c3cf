"""NVFlare job folders, generated from one place.

A job is wiring only: which task and variant, how many rounds and local epochs, which algorithm.
Network, transforms and optimizer come from the task spec at run time, so nothing about the model
is written into the job except its task name. ``fedseg jobs export`` regenerates ``jobs/``; a test
checks that regenerating changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from fedseg.tasks import get_task

CLIENT_SCRIPT = Path(__file__).with_name("fedseg_client.py")
ALGORITHMS = ("fedavg",)
KEY_METRIC = "val_dice"


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

    def __post_init__(self) -> None:
        get_task(self.task, self.variant)  # refuses unknown tasks and variants early
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        for what in ("num_rounds", "local_epochs", "min_clients"):
            if getattr(self, what) < 1:
                raise ValueError(f"{what} must be at least 1, got {getattr(self, what)}")

    @property
    def name(self) -> str:
        suffix = "" if self.variant == "tiny" else f"_{self.variant}"
        return f"{self.task}_{self.algorithm}{suffix}"

    @property
    def train_args(self) -> str:
        return (f"--task {self.task} --variant {self.variant} --local-epochs {self.local_epochs} "
                f"--seed {self.seed}")

    def with_overrides(self, **changes) -> "JobSpec":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# The committed jobs: CPU-sized demos that run unchanged under `nvflare simulator`.
COMMITTED: tuple[JobSpec, ...] = (
    JobSpec("spleen"),
    JobSpec("liver", local_epochs=6),
    JobSpec("prostate", local_epochs=8),
)


def committed_job(name: str) -> JobSpec:
    for job in COMMITTED:
        if job.name == name:
            return job
    raise ValueError(f"no committed job {name!r}; known: {', '.join(j.name for j in COMMITTED)}")


def _recipe_class():
    from nvflare.app_opt.pt.recipes import FedAvgRecipe

    from fedseg.flare.controller import ConsortiumFedAvg

    class ConsortiumFedAvgRecipe(FedAvgRecipe):
        """NVFlare's PyTorch FedAvg recipe with the controller swapped for :class:`ConsortiumFedAvg`."""

        def _create_controller(self, persistor_id, model_params, model_aggregator):
            return ConsortiumFedAvg(
                min_clients=self.min_clients,
                num_rounds=self.num_rounds,
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


def build_recipe(job: JobSpec, client_script: str = CLIENT_SCRIPT.name):
    """The NVFlare recipe for ``job`` (FedAvg with best-model selection and cross-site evaluation).

    ``client_script`` is resolved against the working directory when the recipe is exported.
    """
    from nvflare.recipe import add_cross_site_evaluation

    from fedseg.flare.guard import UpdateGuard

    model = {"class_path": "fedseg.networks.TaskNetwork", "args": {"task": job.task, "variant": job.variant}}
    recipe = _recipe_class()(
        name=job.name,
        model=model,
        min_clients=job.min_clients,
        num_rounds=job.num_rounds,
        train_script=client_script,
        train_args=job.train_args,
        key_metric=KEY_METRIC,
        key_metric_mode="max",
    )
    add_cross_site_evaluation(recipe)
    recipe.add_server_input_filter(UpdateGuard(), tasks=["train"])
    # fedseg is installed where the job runs (or bundled whole, see export_job): tell the exporter
    # not to copy the source files of fedseg components into app/custom. The recipe API has no
    # public handle for this FedJob setting.
    recipe._job.set_app_packages(["fedseg"])
    return recipe


def export_job(job: JobSpec, out_root: Path, client_script: Path = CLIENT_SCRIPT) -> Path:
    """Write ``out_root/<job.name>/`` (replacing an older export) and return its path.

    ``client_script`` is the entry point shipped in ``app/custom/`` (tests swap in fault injectors).
    """
    out_root, client_script = Path(out_root).resolve(), Path(client_script).resolve()
    target = out_root / job.name
    if target.exists():
        shutil.rmtree(target)
    out_root.mkdir(parents=True, exist_ok=True)
    # Export from a folder holding only the client stub: NVFlare then records the script by its bare
    # name and copies no fedseg modules next to it, so the job stays thin and machine-independent.
    with tempfile.TemporaryDirectory() as tmp, _working_dir(Path(tmp)):
        shutil.copyfile(client_script, client_script.name)
        build_recipe(job, client_script.name).export(str(out_root))
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
