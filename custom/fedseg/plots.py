"""The report's figures, built with matplotlib's object API (no global pyplot state).

Every ``figure_*`` function takes plain numbers and returns a :class:`matplotlib.figure.Figure`,
so tests can read titles, axes and labels back; :func:`save_figure` writes the PNG. Dice axes are
always 0 to 1, so two runs' plots can be compared at a glance.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from fedseg.errors import FedsegError

DICE_LIMITS = (0.0, 1.0)
# Reference and prediction colours that stay apart for colour-blind readers (Okabe-Ito green, vermillion).
REFERENCE_COLOUR, PREDICTED_COLOUR = "#009E73", "#D55E00"


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise FedsegError("plots need matplotlib: pip install 'fedseg[report]'") from None
    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _nan(v) -> float:
    return float("nan") if v is None else float(v)


def _dice_axis(ax, label: str = "Dice") -> None:
    ax.set_ylim(*DICE_LIMITS)
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)


def figure_rounds(rounds: Sequence[Mapping], sites: Sequence[str], key: str, best_round: int | None):
    """Training loss (``key="train_loss"``) or mean validation Dice (``"val_dice"``) per round, per site and all."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(7, 4.2)
    ax = fig.subplots()
    x = [r["round"] for r in rounds]
    for site in sites:
        ax.plot(x, [_nan(r["sites"].get(site, {}).get(key)) for r in rounds], marker="o", ms=3, lw=1, label=site)
    ax.plot(x, [_nan(r["all"].get(key)) for r in rounds], color="black", lw=2, label="all sites (weighted)")
    if key == "val_dice":
        _dice_axis(ax, "mean Dice (foreground classes)")
        ax.set_title("Global model validation Dice per round")
        if best_round is not None:
            ax.axvline(best_round, color="grey", ls="--", lw=1, label=f"best round {best_round}")
    else:
        ax.set_ylabel("training loss (the task's loss)")
        ax.set_title("Training loss per round")
        ax.grid(alpha=0.3)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    return fig


def figure_class_curves(steps: Sequence[int], series: Mapping[str, Mapping[str, Sequence[float]]],
                        class_names: Sequence[str], *, title: str, xlabel: str, mark: int | None = None,
                        mark_label: str = ""):
    """One panel per class: validation Dice per step, one line per series (site, or all sites).

    ``series`` is ``{line name: {class name: values per step}}``; a line named ``all sites`` is drawn bold.
    """
    from matplotlib.ticker import MaxNLocator

    n = len(class_names)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    width = max(7.0, 4.2 * cols + 0.6)
    fig = _figure(width, 3.4 * rows + 0.8)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, name in zip(axes, class_names):
        for line, per_class in series.items():
            bold = line.startswith("all sites")
            ax.plot(steps, [_nan(v) for v in per_class.get(name, [None] * len(steps))], marker="" if bold else "o",
                    ms=3, lw=2 if bold else 1, color="black" if bold else None, label=line)
        if mark is not None:
            ax.axvline(mark, color="grey", ls="--", lw=1, label=mark_label)
        _dice_axis(ax, f"{name} Dice")
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[n:]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.suptitle(_wrap(title, int(width * 9)))
    return fig


def figure_heatmap(panels: Mapping[str, Mapping[str, Mapping[str, float | None]]], *, title: str,
                   cases: Mapping[str, Mapping[str, int]] | None = None):
    """Annotated heatmaps, one per panel (class): rows are models, columns sites, cells Dice (0 to 1).

    ``panels`` is ``{panel title: {model: {site: dice or None}}}``; missing cells read ``n/a``.
    ``cases`` (``{model: {site: n}}``) adds the number of cases scored under each value.
    """
    titles = list(panels)
    models = list(next(iter(panels.values())).keys()) if panels else []
    sites = sorted({s for p in panels.values() for row in p.values() for s in row},
                   key=lambda s: (s == "pooled", s))
    cols = min(len(titles), 2)
    rows = math.ceil(len(titles) / cols) if titles else 1
    width = max(6.5, (1.25 * len(sites) + 2.6) * cols)
    fig = _figure(width, (0.55 * len(models) + 1.6) * rows + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    image = None
    for ax, panel in zip(axes, titles):
        values = np.array([[_nan(panels[panel].get(m, {}).get(s)) for s in sites] for m in models], dtype=float)
        image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(sites)), labels=[f"{s}\ntest cases" for s in sites], fontsize=8)
        ax.set_yticks(range(len(models)), labels=models, fontsize=8)
        ax.set_title(panel)
        for i, m in enumerate(models):
            for j, s in enumerate(sites):
                v = values[i, j]
                text = "n/a" if math.isnan(v) else f"{v:.3f}"
                n = (cases or {}).get(m, {}).get(s)
                if n is not None and not math.isnan(v):
                    text += f"\nn={n}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if math.isnan(v) or v < 0.6 else "black")
        ax.set_xlabel("evaluated on")
        ax.set_ylabel("model")
    for ax in axes[len(titles):]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=axes[: len(titles)].tolist(), label="Dice", shrink=0.8)
    fig.suptitle(_wrap(title, int(width * 9)))
    return fig


def figure_case_spread(groups: Sequence[tuple[str, Mapping[str, Sequence[float | None]], str]],
                       class_names: Sequence[str], *, title: str, note: str = ""):
    """Per-case Dice of several models side by side: a box and the individual cases, one panel per class.

    ``groups`` are ``(label, {class: values}, kind)``; ``kind`` ``"cases"`` draws a box and the
    cases, ``"site means"`` (a federated model scored at sites that keep per-case values to
    themselves) draws one diamond per site.
    """
    n = len(class_names)
    width = max(6.0, 2.1 * len(groups) + 1.5)
    fig = _figure(width, 4.1 * n + (0.5 if note else 0))
    axes = np.atleast_1d(fig.subplots(n, 1, squeeze=False)).ravel()
    rng = np.random.default_rng(0)  # fixed jitter: the same data gives the same picture
    for ax, name in zip(axes, class_names):
        for x, (label, values, kind) in enumerate(groups, start=1):
            v = np.array([_nan(u) for u in values.get(name, [])], dtype=float)
            v = v[np.isfinite(v)]
            if not v.size:
                ax.text(x, 0.5, "no cases", ha="center", va="center", fontsize=8, color="grey")
                continue
            if kind == "cases":
                ax.boxplot([v], positions=[x], widths=0.55, showfliers=False,
                           medianprops={"color": "black"}, boxprops={"color": "0.35"})
                ax.scatter(x + rng.uniform(-0.16, 0.16, v.size), v, s=14, alpha=0.75, zorder=3)
            else:
                ax.scatter(np.full(v.size, x), v, marker="D", s=36, color="0.3", zorder=3,
                           label="site means (per-case values stay at the sites)")
        counts = [sum(u is not None and u == u for u in g[1].get(name, [])) for g in groups]
        ax.set_xticks(range(1, len(groups) + 1), fontsize=8,
                      labels=[f"{_wrap(g[0], 24)}\n({k} {'site' if g[2] != 'cases' else 'case'}{'s' * (k != 1)})"
                              for g, k in zip(groups, counts)])
        ax.set_xlim(0.4, len(groups) + 0.6)
        _dice_axis(ax, f"{name} Dice per test case")
        ax.set_title(name)
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(handles[:1], labels[:1], fontsize=7, loc="lower right")
    fig.suptitle(_wrap(title, int(width * 9)) + (f"\n{_wrap(note, int(width * 14))}" if note else ""),
                 fontsize=10 if note else 12)
    return fig


def _wrap(text: str, width: int) -> str:
    """Break long labels (run names) onto several lines; run names break best after their separators."""
    import textwrap

    return "\n".join(line.replace("_ ", "_") for line in textwrap.wrap(text.replace("_", "_ "), width))


def figure_click_curves(curves: Mapping[str, Mapping[int, float]], *, title: str):
    """Dice after N clicks: one line per object, the pooled mean bold (``curves`` key ``"mean"``)."""
    fig = _figure(6.5, 4.2)
    ax = fig.subplots()
    for name, curve in curves.items():
        clicks = sorted(curve)
        bold = name == "mean"
        ax.plot(clicks, [curve[c] for c in clicks], marker="o", lw=2.5 if bold else 1, ms=4,
                color="black" if bold else None, label=name)
    all_clicks = sorted({c for curve in curves.values() for c in curve})
    ax.set_xticks(all_clicks)
    ax.set_xlabel("clicks")
    _dice_axis(ax, "Dice")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def _centre(mask: np.ndarray, fallback: np.ndarray) -> tuple[int, int, int]:
    """The slice indices through the foreground's centre of mass (of ``fallback`` if ``mask`` is empty)."""
    for m in (mask, fallback):
        where = np.argwhere(m > 0)
        if where.size:
            return tuple(int(round(c)) for c in where.mean(0))
    return tuple(s // 2 for s in mask.shape)


def figure_overlay(image: np.ndarray, reference: np.ndarray, predicted: np.ndarray, spacing: Sequence[float],
                   window: tuple[float, float], class_names: Sequence[str], title: str):
    """Axial, coronal and sagittal slices (RAS arrays) through the reference's centre; outlines of both masks.

    Reference outlines are solid green, predicted dashed vermillion; the Dice of each class on the
    image's own grid is in the title. Slices are shown in radiological convention (patient's right
    on the left of the picture) with the voxel spacing as aspect ratio.
    """
    x, y, z = _centre(reference, predicted)
    sx, sy, sz = spacing
    views = (("axial", image[:, :, z].T, reference[:, :, z].T, predicted[:, :, z].T, sy / sx, z),
             ("coronal", image[:, y, :].T, reference[:, y, :].T, predicted[:, y, :].T, sz / sx, y),
             ("sagittal", image[x, :, :].T, reference[x, :, :].T, predicted[x, :, :].T, sz / sy, x))
    dice = []
    for value, name in enumerate(class_names, start=1):
        r, p = reference == value, predicted == value
        total = r.sum() + p.sum()
        dice.append(f"{name} {2 * np.logical_and(r, p).sum() / total:.3f}" if total else f"{name} n/a")
    fig = _figure(13, 5)
    axes = fig.subplots(1, 3)
    lo, hi = window
    for ax, (view, img, ref, pred, aspect, index) in zip(axes, views):
        # The first RAS axis grows towards the patient's right; radiological views show the right on the left.
        if view != "sagittal":
            img, ref, pred = img[:, ::-1], ref[:, ::-1], pred[:, ::-1]
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect, interpolation="nearest")
        for mask, colour, style in ((ref, REFERENCE_COLOUR, "solid"), (pred, PREDICTED_COLOUR, "dashed")):
            if (mask > 0).any():
                levels = [v + 0.5 for v in range(int(mask.max()))]
                ax.contour(mask, levels=levels, colors=colour, linewidths=1.4, linestyles=style, origin="lower")
        ax.set_title(f"{view} (slice {index})")
        ax.set_xticks([])
        ax.set_yticks([])
    from matplotlib.lines import Line2D

    fig.legend(handles=[Line2D([], [], color=REFERENCE_COLOUR, lw=2, label="reference"),
                        Line2D([], [], color=PREDICTED_COLOUR, lw=2, ls="--", label="predicted")],
               loc="lower center", ncol=2, fontsize=9)
    fig.suptitle(f"{title}\nDice on the image grid: {', '.join(dice)}; window {lo:g} to {hi:g}", fontsize=10)
    return fig
