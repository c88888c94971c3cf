"""Deepgrow 2D: slice samples, click maps, training with simulated clicks, Dice-vs-clicks, click-driven inference."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import REAL, TRAIN_SEED, make_site, phantom_dataset
from fedseg.checkpoint import save_model
from fedseg.cli import main
from fedseg.data.msd import write_dataset_json
from fedseg.data.synth import ABDOMEN_ORGANS
from fedseg.deepgrow.annotate import Annotator, ClickError
from fedseg.deepgrow.clicks import ClickDiceScores, ClickSimulator, binary_dice
from fedseg.deepgrow.prepare import prepare_dataset
from fedseg.deepgrow.transforms import slice_train_transforms
from fedseg.engine import Runtime, SegmentationEngine
from fedseg.errors import DataError
from fedseg.site_config import load_site_config
from fedseg.site_data import open_site_data
from fedseg.tasks import get_task

TINY, FULL = get_task("deepgrow2d", "tiny"), get_task("deepgrow2d", "full")
TRAIN_ITERATIONS = 300


@pytest.fixture(scope="module")
def organs(tmp_path_factory) -> Path:
    """Six multi-organ abdominal phantoms, one site: 4 training, 1 validation, 1 test volume."""
    return phantom_dataset(tmp_path_factory, "deepgrow2d", cases=6, seed=2, folder="organs")


@pytest.fixture(scope="module")
def real_msd(tmp_path_factory) -> Path:
    """The real CT as a one-case MSD dataset with a multi-organ label (1 spleen, 2 liver)."""
    root = tmp_path_factory.mktemp("real_msd")
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir()
    ct = nib.load(str(REAL / "ct.nii.gz"))
    spleen = np.asarray(nib.load(str(REAL / "spleen_label.nii.gz")).dataobj) > 0
    liver = np.asarray(nib.load(str(REAL / "liver_label.nii.gz")).dataobj) > 0
    label = np.zeros(ct.shape, np.uint8)
    label[liver], label[spleen] = 2, 1
    nib.save(ct, str(root / "imagesTr" / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(label, ct.affine), str(root / "labelsTr" / "ct.nii.gz"))
    write_dataset_json(root, name="real", description="real CT", modalities=("CT",),
                       labels=("background", "spleen", "liver"),
                       training=[{"image": "imagesTr/ct.nii.gz", "label": "labelsTr/ct.nii.gz"}])
    return root


@pytest.fixture(scope="module")
def trained(organs, tmp_path_factory):
    """The tiny recipe trained on the phantoms' training volumes; returns (engine, site data, model path)."""
    site = load_site_config(make_site(tmp_path_factory.mktemp("dg_site"), "site-1", "deepgrow2d", organs,
                                      organs / "splits" / "site-1.json"))
    data = open_site_data(TINY, site)
    engine = SegmentationEngine(TINY, Runtime.create("cpu", num_threads=2), class_names=data.class_names,
                                seed=TRAIN_SEED)
    engine.train(engine.train_data(data.items("training")), iterations=TRAIN_ITERATIONS)
    path = save_model(tmp_path_factory.mktemp("dg_model") / "deepgrow2d_tiny.pt", engine.get_weights(), TINY)
    return engine, data, path


# Dataset preparation ---------------------------------------------------------------------------
def test_phantom_slices_cover_every_organ_at_the_tasks_spacing(organs, tmp_path):
    prepared = prepare_dataset(TINY, organs, tmp_path / "prep")
    assert set(prepared.per_object()) == set(ABDOMEN_ORGANS)
    listed = json.loads((tmp_path / "prep" / "datalist.json").read_text())
    assert len(listed["training"]) == len(prepared.items) and listed["labels"][0] == "background"
    sample = prepared.items[0]
    mask = np.load(sample["label"])
    assert mask.ndim == 2 and set(np.unique(mask)) <= {0.0, 1.0}
    assert mask.sum() * 9.0 >= TINY.interaction.min_area_mm2  # 3 x 3 mm pixels
    # A slice of a ~400 mm field of view at 3 mm is ~130 pixels wide.
    assert 100 <= max(np.load(sample["image"]).shape) <= 160
    assert all(isinstance(i["case"], int) and "/" not in i["object"] for i in prepared.items)


def test_real_ct_gives_spleen_and_liver_samples_at_1mm(real_msd, tmp_path):
    prepared = prepare_dataset(FULL, real_msd, tmp_path / "prep")
    counts = prepared.per_object()
    assert set(counts) == {"spleen", "liver"} and min(counts.values()) > 10
    image = np.load(prepared.items[0]["image"])
    assert image.shape == (364, 301)  # 122 x 101 pixels of 3 mm span 363 x 300 mm: 1 mm pixels, centre to centre
    assert -1100 < image.min() and image.max() < 3100  # still HU: normalised later, in the transforms


def test_preparation_refuses_a_label_value_the_dataset_does_not_name(real_msd, tmp_path):
    bad = tmp_path / "bad"
    import shutil

    shutil.copytree(real_msd, bad)
    lbl = nib.load(str(bad / "labelsTr" / "ct.nii.gz"))
    data = np.asarray(lbl.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, lbl.affine), str(bad / "labelsTr" / "ct.nii.gz"))
    with pytest.raises(DataError, match=r"labelsTr/ct.nii.gz.*label values 7 .*spleen, liver"):
        prepare_dataset(FULL, bad, tmp_path / "prep")


def test_a_training_sample_carries_its_click_in_the_positive_map(organs, tmp_path):
    item = prepare_dataset(TINY, organs, tmp_path / "prep").items[5]
    sample = slice_train_transforms(TINY, seed=3)(item)
    image, label = sample["image"], sample["label"]
    assert tuple(image.shape) == (3, *TINY.patch_size) and tuple(label.shape) == (1, *TINY.patch_size)
    pos, neg = json.loads(sample["guidance"])
    clicks = [p for p in pos if min(p) >= 0]
    assert clicks and all(min(p) < 0 for p in neg)
    for _, r, c in clicks:
        assert label[0, r, c] == 1 and image[1, r, c] == image[1].max() == 1.0
    assert float(image[2].abs().max()) == 0.0  # no negative click yet


# Training and the click loop ------------------------------------------------------------------
def test_one_training_step_runs_the_click_loop_and_updates_weights(organs, tmp_path):
    site = load_site_config(make_site(tmp_path, "site-1", "deepgrow2d", organs, organs / "splits" / "site-1.json",
                                      cache_dir=str(tmp_path / "cache")))
    data = open_site_data(TINY, site)
    engine = SegmentationEngine(TINY, Runtime.create("cpu", num_threads=2), class_names=data.class_names)
    calls = []
    engine.network.register_forward_hook(lambda m, i, o: calls.append(m.training))
    before = engine.get_weights()
    result = engine.train(engine.train_data(data.items("training")[:16]), iterations=1)
    # train_clicks predictions in eval mode, then the one training forward pass.
    assert calls == [False] * TINY.interaction.train_clicks + [True]
    changed = [k for k in before if not torch.equal(before[k], result.weights[k])]
    assert changed and math.isfinite(result.final_loss)
    assert (tmp_path / "cache" / "deepgrow2d").is_dir()  # derived slices stay in the site's cache_dir


def test_training_and_scoring_repeat_exactly_for_a_seed(organs, tmp_path):
    """The same seed and thread count give the same losses, weights and Dice after every click.

    Covers every random source a run touches: weights, shuffling, the first click (in the loader,
    also in a worker process), the number and place of training clicks, and scoring's clicks.
    """
    site = load_site_config(make_site(tmp_path, "site-1", "deepgrow2d", organs, organs / "splits" / "site-1.json",
                                      cache_dir=str(tmp_path / "cache")))
    data = open_site_data(TINY, site)
    items, held_out = data.items("training")[:16], data.items("test")[::40]
    few_clicks = replace(TINY, interaction=replace(TINY.interaction, train_clicks=3, eval_clicks=(1, 3)))

    def run(seed: int, workers: int = 0):
        runtime = Runtime.create("cpu", num_threads=2, num_workers=workers)
        engine = SegmentationEngine(few_clicks, runtime, class_names=data.class_names, seed=seed)
        result = engine.train(engine.train_data(items), iterations=3)
        return result, engine.evaluate(engine.eval_data(held_out)).as_metrics("test")

    def same(x: dict, y: dict) -> bool:  # NaN (an organ absent from these slices) equals NaN here
        return x.keys() == y.keys() and all(x[k] == y[k] or (math.isnan(x[k]) and math.isnan(y[k])) for k in x)

    (a, dice_a), (b, dice_b), (c, dice_c) = run(5), run(5), run(6)
    assert a.epoch_losses == b.epoch_losses and same(dice_a, dice_b)
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert a.epoch_losses != c.epoch_losses and not same(dice_a, dice_c)  # the seed does reach every source
    (w, dice_w), (v, dice_v) = run(5, workers=1), run(5, workers=1)
    assert w.epoch_losses == v.epoch_losses and same(dice_w, dice_v)


class FixedMask(torch.nn.Module):
    """A "network" whose prediction ignores its input: a fixed mask per batch position."""

    def __init__(self, masks: torch.Tensor):
        super().__init__()
        self.masks = masks

    def forward(self, x):
        return (self.masks[: x.shape[0]] * 2 - 1) * 20.0


def test_dice_after_n_clicks_from_a_known_prediction():
    h = w = 16
    labels = torch.zeros(2, 1, h, w)
    labels[0, 0, 4:12, 4:12] = 1                    # object A: 64 pixels
    labels[1, 0, 2:6, 2:6] = 1                      # object B: 16 pixels
    masks = torch.zeros(2, 1, h, w)
    masks[0, 0, 4:12, 4:8] = 1                      # half of A: Dice 2*32/(32+64) = 2/3
    masks[1, 0, 2:6, 2:6] = 1                       # exactly B: Dice 1
    samples = [{"image": np.zeros((1, h, w), np.float32), "label": labels[i].numpy()} for i in range(2)]
    spec = TINY
    scores = ClickSimulator(spec, seed=0).score(FixedMask(masks), samples, [0, 1], ("a", "b"), torch.device("cpu"))
    assert isinstance(scores, ClickDiceScores) and sorted(scores.curve) == [1, 5, 10, 15]
    for n in (1, 5, 10, 15):
        assert scores.curve[n].per_class() == pytest.approx({"a": 2 / 3, "b": 1.0})
    metrics = scores.as_metrics("val")
    assert metrics["val_dice_click5"] == pytest.approx((2 / 3 + 1) / 2)
    assert metrics["val_dice_a_click15"] == pytest.approx(2 / 3) and metrics["val_n_a"] == 1
    assert binary_dice(torch.sigmoid(FixedMask(masks)(torch.zeros(2, 3, h, w))), labels) == pytest.approx([2 / 3, 1])


def test_clicks_land_where_prediction_and_label_disagree():
    labels = torch.zeros(1, 1, 16, 16)
    labels[0, 0, 4:12, 4:12] = 1
    probs = torch.zeros(1, 1, 16, 16)               # predicts nothing: the next click must be positive, inside
    image = torch.zeros(1, 3, 16, 16)
    guidance = [json.dumps([[[-1, -1, -1]], [[-1, -1, -1]]])]
    sim = ClickSimulator(TINY, seed=1)
    image, guidance = sim.click(image, labels, guidance, probs, probability=1.0)
    pos = [p for p in json.loads(guidance[0])[0] if min(p) >= 0]
    assert len(pos) == 1 and labels[0, 0, pos[0][1], pos[0][2]] == 1
    assert image[0, 1].max() == 1.0 and image[0, 2].max() == 0.0
    everything = torch.ones(1, 1, 16, 16)           # predicts everything: the next click must be negative, outside
    _, guidance = sim.click(image, labels, guidance, everything, probability=1.0)
    neg = [p for p in json.loads(guidance[0])[1] if min(p) >= 0]
    assert len(neg) == 1 and labels[0, 0, neg[0][1], neg[0][2]] == 0


# Bars for the tiny recipe trained as `trained` does, set from 10 trainings (seeds 0-9, table and
# spread in the README, "Deepgrow 2D"), each well clear of the worst of them; checked on further
# seeds with `make test-repeat`.
MIN_DICE_ONE_CLICK = 0.62  # mean over organs after the first click; worst run 0.716, sd 0.02
MIN_GAIN_PER_ORGAN = 0.02  # every organ, Dice after 15 clicks minus after 1; worst run 0.051
# An organ's mean Dice from n to n + 1 clicks may fall this much: noise (the paired standard error
# of one step is 0.004 for the median organ and step, 0.017 at most; no fall in the 10 runs is
# beyond 1.7 of them; the worst, 0.029, is twice the next). The old recipe's kidneys lost 0.11
# from 1 to 15 clicks a little at each step: MIN_GAIN_PER_ORGAN is what catches that.
MAX_FALL_PER_CLICK = 0.06
ANNOTATE_MIN_GAIN_PER_ORGAN = 0.01  # the same gain through fedseg annotate's path; worst run 0.050
ANNOTATE_EVERY = 3  # every third slice of each organ (9 to 18 slices per organ)


def _record(name: str, values: dict) -> None:
    """Keep a test's measurements where tests/repeat.py asks for them (FEDSEG_TEST_RECORD)."""
    folder = os.environ.get("FEDSEG_TEST_RECORD")
    if folder:
        Path(folder, f"{name}.json").write_text(json.dumps({"seed": TRAIN_SEED, **values}, indent=1))


def _falls(curve: dict[str, list[float]]) -> dict[str, float]:
    """Each organ's largest fall of mean Dice from one click count to the next (0 when it never falls)."""
    return {o: max([0.0] + [a - b for a, b in zip(v, v[1:])]) for o, v in curve.items()}


@pytest.mark.stochastic
def test_trained_model_segments_held_out_slices_and_clicks_help(trained):
    """Every organ gains from 1 to 15 clicks, and no further click lowers an organ's Dice beyond noise."""
    engine, data, _ = trained
    every_click = replace(TINY, interaction=replace(TINY.interaction, eval_clicks=tuple(range(1, 16))))
    held_out = engine.eval_data(data.items("test"))
    samples = [held_out.dataset[i] for i in range(len(held_out.dataset))]
    objects = [int(item["region"]) - 1 for item in held_out.dataset.data]
    scores = ClickSimulator(every_click, engine.seed).score(engine.network, samples, objects, data.class_names[1:],
                                                            engine.runtime.device)
    curve = {o: [scores.curve[n].per_class()[o] for n in range(1, 16)] for o in data.class_names[1:]}
    table = scores.curve_table()
    _record("deepgrow_clicks", {"curve": curve, "mean": [scores.curve[n].mean for n in range(1, 16)]})
    assert scores.curve[1].mean > MIN_DICE_ONE_CLICK, table
    gains = {o: v[-1] - v[0] for o, v in curve.items()}
    assert min(gains.values()) > MIN_GAIN_PER_ORGAN, (gains, table)
    assert max(_falls(curve).values()) < MAX_FALL_PER_CLICK, (_falls(curve), table)


@pytest.mark.stochastic
def test_clicks_through_annotate_help_every_organ(trained):
    """fedseg annotate's path (the file's own grid, crop around the clicks) gains from 1 to 15 clicks too."""
    _, data, model = trained
    annotator = Annotator(TINY, model, Runtime.create("cpu", num_threads=2))
    case = data.datalist.items("test")[0]
    image = nib.load(case["image"])
    label = np.asarray(nib.load(case["label"]).dataobj)
    pixel_mm2 = float(np.prod(image.header.get_zooms()[:2]))
    curve = {}
    for value, organ in enumerate(data.class_names[1:], start=1):
        # The slices that would be samples (objects over the smallest clickable area), every few.
        slices = [z for z in range(label.shape[2])
                  if (label[..., z] == value).sum() * pixel_mm2 >= TINY.interaction.min_area_mm2][::ANNOTATE_EVERY]
        runs = [annotator.click_curve(case["image"], z, label[..., z] == value, clicks=15, seed=z) for z in slices]
        curve[organ] = np.mean(runs, axis=0).tolist()
    _record("deepgrow_annotate", {"curve": curve})
    gains = {o: v[-1] - v[0] for o, v in curve.items()}
    assert min(gains.values()) > ANNOTATE_MIN_GAIN_PER_ORGAN, (gains, curve)


# Click-driven inference ----------------------------------------------------------------------
def _spleen_click(z: int) -> tuple[int, int]:
    mask = np.asarray(nib.load(str(REAL / "spleen_label.nii.gz")).dataobj)[:, :, z] > 0
    xs, ys = np.nonzero(mask)
    k = np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2)
    return int(xs[k]), int(ys[k])


def test_annotate_writes_the_mask_on_the_real_cts_own_grid(trained, tmp_path):
    _, _, model = trained
    ct = REAL / "ct.nii.gz"
    z = 14
    out = tmp_path / "mask.nii.gz"
    assert main(["annotate", "--model", str(model), "--image", str(ct), "--slice", str(z),
                 "--fg", "{},{}".format(*_spleen_click(z)), "--out", str(out), "--device", "cpu"]) == 0
    src, mask = nib.load(str(ct)), nib.load(str(out))
    assert mask.shape == src.shape and np.allclose(mask.affine, src.affine)
    data = np.asarray(mask.dataobj)
    assert data[:, :, z].sum() > 0 and data.sum() == data[:, :, z].sum()
    assert data[:, :, z].sum() < 0.5 * data[:, :, z].size  # the clicked object, not the whole slice


def test_annotate_answers_the_same_on_a_flipped_copy_of_the_image(trained, tmp_path):
    """An LPS copy of the CT, clicked at the same anatomy, gives the same mask mirrored."""
    _, _, model = trained
    src = nib.load(str(REAL / "ct.nii.gz"))
    nx, ny, _ = src.shape
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = nx - 1, ny - 1
    lps = tmp_path / "ct_lps.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj)[::-1, ::-1].copy(), src.affine @ flip), str(lps))
    annotator = Annotator(TINY, model, Runtime.create("cpu", num_threads=2))
    z = 14
    x, y = _spleen_click(z)
    ras = annotator.segment_slice(REAL / "ct.nii.gz", z, [(x, y)])
    mirrored = annotator.segment_slice(lps, z, [(nx - 1 - x, ny - 1 - y)])
    assert ras.sum() > 0 and np.array_equal(mirrored, ras[::-1, ::-1])


@pytest.mark.parametrize("z, fg, bg, message", [
    (14, [(200, 10)], [], r"foreground click \(200, 10\) is outside slice 14 of .*ct.nii.gz, which is 122 x 101"),
    (14, [(10, 10)], [(5, -1)], r"background click \(5, -1\) is outside"),
    (30, [(10, 10)], [], r"slice 30 is outside .*slices 0..29"),
])
def test_clicks_outside_the_image_are_refused(trained, z, fg, bg, message):
    annotator = Annotator(TINY, trained[2], Runtime.create("cpu", num_threads=1))
    with pytest.raises(ClickError, match=message):
        annotator.segment_slice(REAL / "ct.nii.gz", z, fg, bg)


def test_annotate_cli_refuses_a_malformed_click(trained, capsys):
    with pytest.raises(SystemExit):
        main(["annotate", "--model", str(trained[2]), "--image", str(REAL / "ct.nii.gz"), "--slice", "3",
              "--fg", "12;40", "--out", "x.nii.gz"])
    assert "a click is two whole voxel indices x,y" in capsys.readouterr().err
