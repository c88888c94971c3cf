"""Shared fixtures: small phantom datasets, site YAMLs and a briefly trained tiny spleen model."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from fedseg.data.split import split_dataset
from fedseg.data.synth import synthesize
from fedseg.engine import Runtime, SegmentationEngine
from fedseg.site_config import load_site_config, write_site_config
from fedseg.site_data import open_site_data
from fedseg.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "tests" / "data" / "real"

torch.set_num_threads(2)
logging.getLogger("fedseg").setLevel(logging.INFO)


@pytest.fixture(scope="session")
def real_ct() -> Path:
    return REAL / "ct.nii.gz"


@pytest.fixture(scope="session")
def spleen_dataset(tmp_path_factory) -> Path:
    """Ten spleen phantoms in MSD layout (seed 1), split over one site: 6 training, 2 validation, 2 test."""
    root = tmp_path_factory.mktemp("spleen")
    synthesize("spleen", root, cases=10, seed=1, workers=2)
    split_dataset(root, 1, root / "splits", seed=0)
    return root


@pytest.fixture(scope="session")
def liver_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("liver")
    synthesize("liver", root, cases=6, seed=4, workers=2)
    split_dataset(root, 1, root / "splits", seed=0)
    return root


@pytest.fixture(scope="session")
def prostate_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("prostate")
    synthesize("prostate", root, cases=6, seed=4, workers=2)
    split_dataset(root, 1, root / "splits", seed=0)
    return root


def make_site(tmp: Path, name: str, task: str, data_root: Path, datalist: Path, **settings) -> Path:
    settings = {"device": "cpu", "num_threads": 2, "cache_rate": 1.0, "num_workers": 0, **settings}
    return write_site_config(tmp / f"{name}.yaml", name, {task: (data_root, datalist)}, **settings)


@pytest.fixture(scope="session")
def spleen_site(spleen_dataset, tmp_path_factory) -> Path:
    return make_site(tmp_path_factory.mktemp("sites"), "site-1", "spleen", spleen_dataset,
                     spleen_dataset / "splits" / "site-1.json")


@pytest.fixture(scope="session")
def trained_spleen(spleen_site, tmp_path_factory):
    """The tiny spleen recipe trained briefly on 6 phantoms; returns (engine, site data, model path)."""
    from fedseg.checkpoint import save_model

    spec = get_task("spleen", "tiny")
    site = load_site_config(spleen_site)
    data = open_site_data(spec, site)
    engine = SegmentationEngine(spec, Runtime.create("cpu", num_threads=2), class_names=data.class_names, seed=0)
    engine.train(engine.train_data(data.items("training")), iterations=TRAIN_ITERATIONS)
    path = save_model(tmp_path_factory.mktemp("model") / "spleen_tiny.pt", engine.get_weights(), spec)
    return engine, data, path


TRAIN_ITERATIONS = 240  # ~70 s on 2 CPU threads; held-out Dice about 0.8 (seeds 0 and 1)
