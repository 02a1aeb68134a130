"""Plots written beside a command's other outputs and logged to MLflow (matplotlib, headless).

Readable with many models: every series gets a colour *and* a marker from
:func:`palette` (60 colours, so two series share a colour only beyond 60 and
then differ in marker and line style), legends sit outside the axes so they
never cover data, and figures are saved with a tight bounding box so no label
is cut at an edge.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
LINESTYLES = ("-", "--", "-.", ":")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def palette(n: int) -> list[tuple[tuple[float, ...], str, str]]:
    """``n`` distinguishable (colour, marker, line style) triples.

    Up to 10 series: tab10; up to 20: tab20; beyond: tab20, tab20b and tab20c
    (60 colours) — consecutive colours of those maps are shades of one hue,
    so each series also gets its own marker, and past 60 its own line style.
    """
    import matplotlib

    if n <= 10:
        colours = list(matplotlib.colormaps["tab10"].colors)
    elif n <= 20:
        colours = list(matplotlib.colormaps["tab20"].colors)
    else:
        colours = [c for name in ("tab20", "tab20b", "tab20c") for c in matplotlib.colormaps[name].colors]
    return [
        (colours[i % len(colours)], MARKERS[i % len(MARKERS)], LINESTYLES[(i // len(colours)) % len(LINESTYLES)])
        for i in range(n)
    ]


def outside_legend(ax, fontsize: float = 7, ncols: int = 1):
    """A legend right of the axes: it never covers a point."""
    return ax.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, ncols=ncols, frameon=False)


def place_labels(ax, xs, ys, labels, fontsize: float = 6) -> list:
    """Short labels beside points, each moved to the first nearby spot that overlaps no label placed before it."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    offsets = [(4, 3), (4, -9), (-4, 3), (-4, -9), (4, 10), (4, -16), (-4, 10), (-4, -16), (10, -3), (-10, -3)]
    placed, texts = [], []
    for x, y, label in sorted(zip(xs, ys, labels), key=lambda t: (t[1], t[0])):
        text = None
        for dx, dy in offsets:
            candidate = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                                    ha="left" if dx > 0 else "right", annotation_clip=False)
            box = candidate.get_window_extent(renderer).expanded(1.05, 1.1)
            if not any(box.overlaps(other) for other in placed):
                text = candidate
                break
            candidate.remove()
        if text is None:  # every spot taken: keep the first, overlapping
            dx, dy = offsets[0]
            text = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize, annotation_clip=False)
        placed.append(text.get_window_extent(renderer))
        texts.append(text)
    return texts


def save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")  # legends and labels outside the axes are kept, never cut
    _pyplot().close(fig)
    return path


def calibration_plot(table: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    """Reliability diagram: predicted probability vs observed success, one line per model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    models = sorted(table)
    for model, (colour, marker, style) in zip(models, palette(len(models))):
        mean_p, rate, counts = table[model]
        ok = counts > 0
        ax.plot(mean_p[ok], rate[ok], marker=marker, markersize=3, linewidth=1, linestyle=style, color=colour, label=model)
    ax.set_xlabel("predicted probability of success")
    ax.set_ylabel("observed success rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    outside_legend(ax, fontsize=6, ncols=1 if len(models) <= 25 else 2)
    return save(fig, path)
