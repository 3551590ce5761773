"""Paper-style grid figure: one row per model, ground truth beside the model.

:func:`paper_grid` draws log-density functions; it does not load anything. To draw finished runs
from their folders: ``python -m scripts.paper_grid OUT.png RUN_DIR [RUN_DIR ...]``.
"""

from __future__ import annotations

from pathlib import Path

from viz.figures import DPI, PANEL_INCHES, density_values, draw_panel, plt


def paper_grid(runs, path, res: int = 200, progress: bool = False):
    """``runs``: list of ``(title, manifold, true_log_prob, model_log_prob)``; writes ``path``."""
    n = len(runs)
    width = 2 * 2 * PANEL_INCHES  # two columns wide enough for a 2:1 Mollweide panel each
    fig = plt.figure(figsize=(width, PANEL_INCHES * n), dpi=DPI)
    for i, (title, manifold, lp_true, lp_model) in enumerate(runs):
        truth = density_values(lp_true, manifold, res, progress)
        model = density_values(lp_model, manifold, res, progress)
        vmax = float(max(truth.max(), model.max())) or 1.0
        y0 = 1 - (i + 1) / n
        for j, (vals, name) in enumerate([(truth, "ground truth"), (model, "model")]):
            w = 0.5 if manifold == "Sphere" else 0.25
            x0 = j * 0.5 + (0.5 - w) / 2
            draw_panel(fig, [x0, y0 + 0.02 / n, w, 0.85 / n], manifold, vals, vmax=vmax,
                       title=f"{title}: {name}" if title else name)  # fmt: skip
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
