"""fedseg report: runs labelled by their own names, and every figure with fixed 0-1 Dice axes and the right labels."""

import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from fedseg.cli import main
from fedseg.flare.report import build_report
from fedseg.plots import figure_case_spread, figure_class_curves, figure_click_curves, figure_heatmap, figure_overlay
from fedseg.results import SiteScore, models_to_json, with_pooled, write_json

CLASSES = ("liver", "tumour")


def _metrics(prefix: str, dice: dict, n: int) -> dict:
    out = {f"{prefix}_dice": sum(dice.values()) / len(dice), f"{prefix}_cases": float(n)}
    for name, value in dice.items():
        out[f"{prefix}_dice_{name}"], out[f"{prefix}_n_{name}"], out[f"{prefix}_fp_{name}"] = value, float(n), 0.0
    return out


def fake_job(run_dir: Path, *, clicks: bool = False, per_case: bool = True) -> Path:
    """A finished 2-site, 3-round federated run as fedseg simulate leaves it (server files and results.json)."""
    job = run_dir / "workspace" / "liver_fedavg" / "server" / "simulate_job"
    (job / "cross_site_val").mkdir(parents=True)
    (job / "metrics").mkdir()
    models = ("SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", "site-1", "site-2")
    cross = {}
    for k, site in enumerate(("site-1", "site-2")):
        cross[site] = {}
        for j, model in enumerate(models):
            m = _metrics("test", {"liver": 0.9 - 0.1 * j, "tumour": 0.4 + 0.05 * k}, 3)
            if clicks:
                for c in (1, 5, 10, 15):
                    m[f"test_dice_click{c}"] = 0.5 + c / 40
                    m[f"test_dice_liver_click{c}"], m[f"test_dice_tumour_click{c}"] = 0.6 + c / 50, 0.3 + c / 40
            cross[site][model] = m
    (job / "cross_site_val" / "cross_val_results.json").write_text(json.dumps(cross))
    lines = []
    for r in range(3):
        sites = [{"name": s, "metrics": [{"name": k, "value": v} for k, v in
                                         {**_metrics("val", {"liver": 0.3 * (r + 1), "tumour": 0.1 * r}, 2),
                                          "train_loss": 1.0 - 0.2 * r}.items()]} for s in ("site-1", "site-2")]
        agg = [{"name": k, "value": v} for k, v in {**_metrics("val", {"liver": 0.3 * (r + 1), "tumour": 0.1 * r}, 4),
                                                     "train_loss": 1.0 - 0.2 * r}.items()]
        lines.append(json.dumps({"round": r, "sites": sites, "aggregated_metrics": agg}))
    (job / "metrics" / "round_metrics.jsonl").write_text("\n".join(lines) + "\n")
    (job / "metrics" / "metrics_summary.json").write_text(json.dumps({"best_round": 2}))
    body = {"task": "liver", "variant": "tiny", "algorithm": "fedavg", "rounds": 3, "local_epochs": 4,
            "classes": list(CLASSES), "training_cases": {"site-1": 5, "site-2": 7}, "models": {}}
    if per_case:
        body["per_case_dice"] = {"final": {"site-1": {"liver": [0.9, 0.8, 0.85], "tumour": [0.4, None, 0.5]},
                                           "site-2": {"liver": [0.7, 0.95, 0.9], "tumour": [0.2, 0.6, None]}}}
    write_json(run_dir / "results.json", body)
    return run_dir


def fake_local_run(folder: Path, mode: str, sites: list[str], epochs: int, training_cases: int) -> Path:
    score = SiteScore(3, {"liver": 0.8, "tumour": 0.3}, {"liver": 3, "tumour": 2})
    models = {"final": with_pooled({s: score for s in sites}), "best (epoch 2)": with_pooled({s: score for s in sites})}
    write_json(folder / "results.json", {
        "task": "liver", "variant": "tiny", "mode": mode, "backend": "local", "sites": sites, "epochs": epochs,
        "best_epoch": 2, "training_cases": training_cases, "classes": list(CLASSES), "models": models_to_json(models),
        "history": [{"epoch": e, "train_loss": 1 / e, "val_dice": 0.2 * e, "val_dice_liver": 0.25 * e,
                     "val_dice_tumour": 0.1 * e} for e in (1, 2, 3)],
        "per_case_dice": {"final": {s: {"liver": [0.7, 0.9, 0.8], "tumour": [0.1, 0.5, None]} for s in sites}}})
    return folder


def _png_ok(path: Path, min_kb: int = 15) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > min_kb * 1024, path
    pixels = mpimg.imread(str(path))
    assert pixels.ndim == 3 and pixels[..., :3].std() > 0.05, f"{path} looks blank"
    return pixels


def test_compare_labels_runs_in_one_folder_by_their_own_names(tmp_path):
    fed = fake_job(tmp_path / "runs" / "liver_fedavg_2sites_simulator_1")
    pooled = fake_local_run(tmp_path / "runs" / "liver_pooled_local_20260101-100000", "pooled", ["site-1", "site-2"], 40, 12)
    single = fake_local_run(tmp_path / "runs" / "liver_site-1_local_20260101-110000", "single-site", ["site-1"], 20, 5)
    report = build_report(fed, compare=[pooled, single])
    labels = [run.label for run in report.compared]
    assert labels == ["liver_fedavg_2sites_simulator_1: final global", "liver_fedavg_2sites_simulator_1: best global (round 2)",
                      "liver_pooled_local_20260101-100000: final", "liver_site-1_local_20260101-110000: final"]
    md = report.markdown()
    for text in ("| liver_pooled_local_20260101-100000: final | centralized (site-1 + site-2 pooled) | 40 epochs (local) | 12 |",
                 "| liver_site-1_local_20260101-110000: final | site-1 alone | 20 epochs (local) | 5 |",
                 "3 rounds x 4 local epochs | 12 |"):
        assert text in md
    # Found by themselves beside the federated run: the same two, by the same names.
    assert [r.label for r in build_report(fed).compared][2:] == labels[2:]


def test_two_runs_of_one_name_in_different_folders_both_stay(tmp_path):
    fed = fake_job(tmp_path / "fed")
    a = fake_local_run(tmp_path / "a" / "run", "single-site", ["site-1"], 10, 5)
    b = fake_local_run(tmp_path / "b" / "run", "single-site", ["site-1"], 30, 5)
    labels = [r.label for r in build_report(fed, compare=[a, b]).compared]
    assert labels[2:] == ["a/run: final", "b/run: final"]


def test_auto_discovery_skips_runs_without_epochs_and_older_runs_of_a_setting(tmp_path):
    root = tmp_path / "runs"
    fed = fake_job(root / "liver_fedavg")
    fake_local_run(root / "zero", "single-site", ["site-1"], 0, 5)
    old = fake_local_run(root / "older", "single-site", ["site-2"], 10, 5)
    new = fake_local_run(root / "newer", "single-site", ["site-2"], 10, 5)
    import os
    os.utime(old / "results.json", (1, 1))
    os.utime(new / "results.json", (2e9, 2e9))
    assert [r.label for r in build_report(fed).compared][2:] == ["newer: final"]


def test_report_writes_every_figure(tmp_path, capsys):
    fed = fake_job(tmp_path / "runs" / "fed", clicks=True)
    fake_local_run(tmp_path / "runs" / "single", "single-site", ["site-1"], 20, 5)
    assert main(["report", str(fed)]) == 0
    out = capsys.readouterr().out
    for name in ("training_loss.png", "validation_dice.png", "validation_dice_per_class.png", "cross_site_dice.png",
                 "case_dice_spread.png", "dice_vs_clicks.png"):
        _png_ok(fed / name)
        assert name in out and name in (fed / "report.md").read_text()
    body = json.loads((fed / "report.json").read_text())
    assert body["click_curves"]["mean"]["15"] == pytest.approx(0.5 + 15 / 40)
    assert "## Final global model: test Dice after N clicks" in (fed / "report.md").read_text()


def test_a_local_run_gets_its_own_report(tmp_path, capsys):
    run = fake_local_run(tmp_path / "liver_site-1_local_x", "single-site", ["site-1"], 3, 5)
    assert main(["report", str(run)]) == 0
    for name in ("validation_dice_per_class.png", "test_dice_matrix.png", "case_dice_spread.png"):
        _png_ok(run / name)
    assert "site-1 alone, 3 epochs (local), 5 training case(s)" in (run / "report.md").read_text()


def _visible(fig):
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def test_per_class_curves_have_fixed_dice_axes_and_one_panel_per_class():
    fig = figure_class_curves([0, 1, 2], {"site-1": {"liver": [0.01, 0.02, 0.03], "tumour": [0, 0, 0.01]},
                                          "all sites (weighted)": {"liver": [0.01, 0.02, 0.04]}},
                              CLASSES, title="t", xlabel="round", mark=2, mark_label="best round 2")
    axes = _visible(fig)
    assert [ax.get_title() for ax in axes] == list(CLASSES)
    for ax in axes:
        assert ax.get_ylim() == (0.0, 1.0) and ax.get_xlabel() == "round"
    assert axes[1].get_ylabel() == "tumour Dice"
    assert {t.get_text() for t in axes[0].get_legend().get_texts()} == {"site-1", "all sites (weighted)", "best round 2"}


def test_heatmap_is_annotated_with_every_cell():
    panels = {"liver": {"final global": {"site-1": 0.91, "site-2": None}, "site-1 local": {"site-1": 0.5, "site-2": 0.25}}}
    fig = figure_heatmap(panels, title="Cross-site", cases={"final global": {"site-1": 3}})
    ax = _visible(fig)[0]
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["0.910\nn=3", "n/a", "0.500", "0.250"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["final global", "site-1 local"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["site-1\ntest cases", "site-2\ntest cases"]
    image = ax.get_images()[0]
    assert image.get_clim() == (0.0, 1.0)


def test_case_spread_shows_cases_and_site_means_side_by_side():
    groups = [("fed: final global", {"liver": [0.8, 0.9]}, "site means"),
              ("pooled: final", {"liver": [0.7, None, 0.95, 0.5]}, "cases")]
    fig = figure_case_spread(groups, ("liver",), title="Dice per test case", note="diamonds: site means")
    ax = _visible(fig)[0]
    assert ax.get_ylim() == (0.0, 1.0)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fed: final global\n(2 sites)", "pooled: final\n(3 cases)"]
    points = [c.get_offsets() for c in ax.collections]
    assert sorted(len(p) for p in points) == [2, 3]  # two site means, three scored cases (None left out)


def test_click_curve_axes():
    fig = figure_click_curves({"spleen": {1: 0.5, 5: 0.8}, "mean": {1: 0.55, 5: 0.82}}, title="Dice vs clicks")
    ax = fig.axes[0]
    assert ax.get_ylim() == (0.0, 1.0) and ax.get_xlabel() == "clicks"
    assert list(ax.get_xticks()) == [1, 5]


def test_overlay_has_three_views_through_the_reference(tmp_path):
    image = np.random.default_rng(0).normal(40, 15, (40, 36, 20))
    ref = np.zeros(image.shape, np.int16)
    ref[10:20, 12:22, 5:12] = 1
    pred = np.roll(ref, 2, axis=0)
    fig = figure_overlay(image, ref, pred, (1.0, 1.0, 3.0), (-57, 164), ("spleen",), "final model, site-1 test case 1")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["axial (slice 8)", "coronal (slice 16)", "sagittal (slice 14)"]
    assert "Dice on the image grid: spleen 0.800" in fig._suptitle.get_text()
    assert all(ax.collections for ax in fig.axes)  # both outlines drawn in every view
