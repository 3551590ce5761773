"""Paper-style grid figures: one row per density, ground truth beside the model(s).

:func:`paper_grid` (ground truth | model) and :func:`model_grid` (ground truth | any number of models,
e.g. the paper's baselines beside the MCNF) draw log-density functions; they do not load anything. To
draw finished runs from their folders: ``python -m scripts.paper_grid OUT.png RUN_DIR [RUN_DIR ...]``.
"""

from __future__ import annotations

from pathlib import Path

from viz.figures import DPI, PANEL_INCHES, density_values, draw_panel, panel_size, plt


def model_grid(rows, path, res: int = 200, progress: bool = False, scale: str = "truth"):
    """``rows``: list of ``(title, manifold, [(column name, log_prob), ...])``, the ground truth first.

    Every row shares one colour scale across its panels: up to the ground truth's peak
    (``scale="truth"``; a model's higher values saturate, so a spike of one model, e.g. at a pole
    where its density diverges, cannot turn the row black) or to the largest value of any panel
    (``"all"``). Sphere panels (Mollweide, 2:1) get twice the
    width of hyperboloid ones (Poincare disk); all rows should have the same number of columns.
    """
    n, cols = len(rows), max(len(r[2]) for r in rows)
    wide = any(panel_size(r[1])[0] > PANEL_INCHES for r in rows)
    fig = plt.figure(figsize=((2 if wide else 1) * PANEL_INCHES * cols, PANEL_INCHES * n), dpi=DPI)
    for i, (title, manifold, panels) in enumerate(rows):
        values = [density_values(lp, manifold, res, progress) for _, lp in panels]
        vmax = float(values[0].max() if scale == "truth" else max(v.max() for v in values)) or 1.0
        y0 = 1 - (i + 1) / n
        for j, ((name, _), vals) in enumerate(zip(panels, values, strict=True)):
            w = (1 if panel_size(manifold)[0] > PANEL_INCHES or not wide else 0.5) / cols
            x0 = j / cols + (1 / cols - w) / 2
            draw_panel(fig, [x0, y0 + 0.02 / n, w, 0.85 / n], manifold, vals, vmax=vmax,
                       title=f"{title}: {name}" if title else name)  # fmt: skip
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def paper_grid(runs, path, res: int = 200, progress: bool = False):
    """``runs``: list of ``(title, manifold, true_log_prob, model_log_prob)``; writes ``path``."""
    rows = [(t, M, [("ground truth", lp_true), ("model", lp_model)]) for t, M, lp_true, lp_model in runs]
    return model_grid(rows, path, res=res, progress=progress, scale="all")
