"""Plots saved as run artifacts (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def calibration_plot(table: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    """Reliability diagram: predicted probability vs observed success, one line per model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    for model, (mean_p, rate, counts) in sorted(table.items()):
        ok = counts > 0
        ax.plot(mean_p[ok], rate[ok], marker="o", markersize=3, linewidth=1, label=model)
    ax.set_xlabel("predicted probability of success")
    ax.set_ylabel("observed success rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    if len(table) <= 16:
        ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
