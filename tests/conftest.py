"""Shared fixtures: small phantom datasets, site YAMLs and a briefly trained tiny spleen model."""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

# make test runs two files at once (pytest-xdist) and a simulator runs its sites at once, each training
# on 2 threads of a 2-core machine: OpenMP's spin-waiting then costs up to 7.6x (bench/README.md,
# "Threads"). Passive waiting changes no result, only how idle threads wait; read when torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

from fedseg.data.split import split_dataset
from fedseg.data.synth import synthesize
from fedseg.engine import Runtime, SegmentationEngine
from fedseg.site_config import load_site_config, write_site_config
from fedseg.site_data import open_site_data
from fedseg.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "tests" / "data" / "real"

# CPU results depend on the thread count (reductions split differently): fixed, so runs repeat.
torch.set_num_threads(2)
# `precision: auto` is bf16 on CPUs with AMX / AVX-512 BF16 and fp32 elsewhere; the suite's bars were
# measured in fp32, so it pins fp32 on every machine (subprocesses inherit it). tests/test_precision.py
# checks auto's own choice and bf16 against fp32.
os.environ.setdefault("FEDSEG_AUTO_PRECISION", "fp32")
logging.getLogger("fedseg").setLevel(logging.INFO)
# Seed of the tests' trainings; tests/repeat.py (make test-repeat) varies it to measure pass rates.
TRAIN_SEED = int(os.environ.get("FEDSEG_TEST_SEED", "0"))


def pytest_collection_modifyitems(config, items) -> None:
    """Files with the most end-to-end (slow) tests first, each file's own order kept.

    ``make test`` hands whole files to its workers in this order (pytest-xdist, ``--dist loadfile``):
    a long file started last would leave the other workers idle for its whole run.
    """
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    first_seen = {path: k for k, path in enumerate(dict.fromkeys(item.path for item in items))}
    items.sort(key=lambda item: (-slow[item.path], first_seen[item.path]))


@pytest.fixture(scope="session")
def real_ct() -> Path:
    return REAL / "ct.nii.gz"


def phantom_dataset(tmp_path_factory, task: str, cases: int, seed: int, folder: str | None = None) -> Path:
    """``cases`` phantoms of ``task`` in MSD layout, split over one site (60/20/20)."""
    root = tmp_path_factory.mktemp(folder or task)
    synthesize(task, root, cases=cases, seed=seed, workers=2)
    split_dataset(root, 1, root / "splits", seed=0)
    return root


@pytest.fixture(scope="session")
def spleen_dataset(tmp_path_factory) -> Path:
    """Ten spleen phantoms in MSD layout (seed 1), split over one site: 6 training, 2 validation, 2 test."""
    return phantom_dataset(tmp_path_factory, "spleen", cases=10, seed=1)


@pytest.fixture(scope="session")
def liver_dataset(tmp_path_factory):
    return phantom_dataset(tmp_path_factory, "liver", cases=6, seed=4)


@pytest.fixture(scope="session")
def prostate_dataset(tmp_path_factory):
    return phantom_dataset(tmp_path_factory, "prostate", cases=6, seed=4)


def make_site(tmp: Path, name: str, task: str, data_root: Path, datalist: Path, **settings) -> Path:
    settings = {"device": "cpu", "num_threads": 2, "cache_rate": 1.0, "num_workers": 0, **settings}
    return write_site_config(tmp / f"{name}.yaml", name, {task: (data_root, datalist)}, **settings)


@pytest.fixture(scope="session")
def spleen_site(spleen_dataset, tmp_path_factory) -> Path:
    return make_site(tmp_path_factory.mktemp("sites"), "site-1", "spleen", spleen_dataset,
                     spleen_dataset / "splits" / "site-1.json")


def once_per_run(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """The folder ``name`` that ``make`` fills once per test run, however many pytest-xdist workers ask.

    Each worker holds session fixtures of its own; what costs minutes to build (a trained model) is
    built by the first worker that needs it, under a file lock, and read by the others.
    """
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the run's folder over the workers'
    folder = root / name
    with FileLock(str(root / f"{name}.lock")):
        if not (folder / ".complete").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            make(folder)
            (folder / ".complete").touch()
    return folder


@pytest.fixture(scope="session")
def trained_spleen(spleen_site, tmp_path_factory):
    """The tiny spleen recipe trained briefly on 6 phantoms; returns (engine, site data, model path).

    Trained once per run (:func:`once_per_run`): the training is seeded on a fixed thread count, so a
    worker that reads the model holds the weights it would have trained itself.
    """
    from fedseg.checkpoint import load_model, save_model

    spec = get_task("spleen", "tiny")
    site = load_site_config(spleen_site)
    data = open_site_data(spec, site)
    engine = SegmentationEngine(spec, Runtime.create("cpu", num_threads=2), class_names=data.class_names,
                                seed=TRAIN_SEED)

    def train(folder: Path) -> None:
        engine.train(engine.train_data(data.items("training")), iterations=TRAIN_ITERATIONS)
        save_model(folder / "spleen_tiny.pt", engine.get_weights(), spec)

    path = once_per_run(tmp_path_factory, f"trained_spleen_seed{TRAIN_SEED}", train) / "spleen_tiny.pt"
    engine.set_weights(load_model(path, spec))
    return engine, data, path


TRAIN_ITERATIONS = 240  # ~70 s on 2 CPU threads; held-out Dice about 0.8 (seeds 0 and 1)


def assert_global_is_case_weighted_average(workspace: Path, n_cases: list[int], local_round: int) -> None:
    """The server's last global model equals the sites' last local models averaged by training cases.

    Fails too if a plain (unweighted) mean would match as well, so the weighting is really checked.
    """
    import numpy as np

    def floats(state):
        return {k: v.double() for k, v in state.items() if v.dtype.is_floating_point}

    local = [torch.load(workspace / f"site-{k}" / "fedseg" / "spleen_local_model.pt", weights_only=True)
             for k in range(1, len(n_cases) + 1)]
    assert [m["round"] for m in local] == [local_round] * len(n_cases)
    w = [floats(m["state_dict"]) for m in local]
    glob = torch.load(workspace / "server/simulate_job/app_server/FL_global_model.pt", weights_only=True)["model"]
    glob = {k: torch.as_tensor(np.asarray(v)).double() for k, v in glob.items() if k in w[0]}
    weighted = {k: sum(n * s[k] for n, s in zip(n_cases, w)) / sum(n_cases) for k in w[0]}
    plain = {k: sum(s[k] for s in w) / len(w) for k in w[0]}
    err_weighted = max(float((glob[k] - weighted[k]).abs().max()) for k in w[0])
    err_plain = max(float((glob[k] - plain[k]).abs().max()) for k in w[0])
    assert err_weighted < 1e-5
    assert err_plain > 100 * max(err_weighted, 1e-7)
