"""The paper's figures: densities on the Poincare disk (H^2) and on Mollweide maps (S^2).

Everything here takes arrays or callables (``log_prob(x) -> (N,)`` on points ``(N, 3)``), never
training state. Cartopy is imported lazily (a hyperboloid run never needs it); without it the
sphere falls back to matplotlib's own ``mollweide`` projection, with a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from manifolds import MANIFOLDS, get_manifold  # noqa: E402

PANEL_INCHES = 4.0
DPI = 100
CMAP = "magma"


# -- grids -----------------------------------------------------------------------------------------
def _manifold(manifold):
    """A manifold instance from a name (2-dimensional) or an instance; ValueError without a figure."""
    M = get_manifold(manifold, 2) if isinstance(manifold, str) else manifold
    if M.figure_kind is None or M.dim != 2:
        raise ValueError(f"no density figure for the {M.dim}-dimensional {M.name}; figures exist for "
                         f"{', '.join(k for k, c in MANIFOLDS.items() if c.figure_kind)} (n = 2)")  # fmt: skip
    return M


@torch.no_grad()
def evaluate_on_grid(log_prob, x, chunk: int = 20000, progress: bool = False, desc: str = "grid"):
    """``exp(log_prob)`` on points ``x`` in chunks, without autograd graphs; numpy float64."""
    from tqdm import tqdm

    out = np.empty(x.shape[0])
    for i in tqdm(range(0, x.shape[0], chunk), disable=not progress, desc=desc, leave=False):
        out[i : i + chunk] = log_prob(x[i : i + chunk]).double().exp().cpu().numpy()
    return np.nan_to_num(out, nan=0.0, posinf=0.0)


def density_values(log_prob, manifold, res: int, progress: bool = False):
    """The 2-D array ``(res, res)`` that a density figure shows (rows from the bottom up), asked of the
    manifold (:meth:`manifolds.Manifold.plot_grid`): the density times the manifold's figure factor
    (hyperboloid: ``J(log_o x)``, the density pulled back to the tangent plane at the origin, as in the
    paper's figures); zero outside the manifold's part of the picture (the Poincare disk)."""
    M = _manifold(manifold)
    x, inside, log_factor = M.plot_grid(res)
    full = np.zeros(res * res)
    full[inside] = evaluate_on_grid(log_prob, x[inside], progress=progress) * log_factor[inside].exp().numpy()
    return full.reshape(res, res)


# -- axes ------------------------------------------------------------------------------------------
def _cartopy():
    try:
        import cartopy.crs as ccrs

        return ccrs
    except Exception as e:  # ImportError, or a broken GEOS/PROJ install
        warnings.warn(f"Cartopy unavailable ({e}); using matplotlib's mollweide projection", stacklevel=3)
        return None


def _sphere_axes(fig, rect, ccrs):
    if ccrs is not None:
        return fig.add_axes(rect, projection=ccrs.Mollweide())
    ax = fig.add_axes(rect, projection="mollweide")
    ax.set_xticklabels([])
    ax.set_yticklabels([])
    return ax


def _draw_sphere(ax, values, res, ccrs, vmax, scatter=None, stock=False):
    lon = np.linspace(-180, 180, res + 1)
    lat = np.linspace(-90, 90, res + 1)
    if ccrs is not None:
        ax.set_global()
        if stock:
            ax.stock_img()
        if values is not None:
            ax.pcolormesh(lon, lat, values, cmap=CMAP, vmin=0, vmax=vmax, transform=ccrs.PlateCarree(),
                          shading="flat", rasterized=True, alpha=0.85 if stock else 1.0, antialiased=False,
                          linewidth=0)  # fmt: skip
        if scatter is not None:
            ax.scatter(scatter[:, 0], scatter[:, 1], s=3, c="tab:cyan", transform=ccrs.PlateCarree(), lw=0)
        ax.gridlines(color="white", alpha=0.25, linewidth=0.5)
    else:
        if values is not None:
            ax.pcolormesh(np.radians(lon), np.radians(lat), values, cmap=CMAP, vmin=0, vmax=vmax,
                          shading="flat", rasterized=True)  # fmt: skip
        if scatter is not None:
            ax.scatter(np.radians(scatter[:, 0]), np.radians(scatter[:, 1]), s=3, c="tab:cyan", lw=0)
        ax.grid(color="white", alpha=0.25, linewidth=0.5)
        if values is not None:
            ax.set_facecolor(plt.get_cmap(CMAP)(0.0))


def _draw_plane(ax, M, values, vmax, scatter=None):
    lo, hi = M.plot_extent
    circle = M.plot_outline == "circle"
    if values is not None:
        c = np.linspace(lo, hi, values.shape[0] + 1)
        ax.pcolormesh(c, c, values, cmap=CMAP, vmin=0, vmax=vmax, shading="flat", rasterized=True)
    elif circle:
        ax.add_patch(plt.Circle((0, 0), hi, color=plt.get_cmap(CMAP)(0.0)))
    else:
        ax.set_facecolor(plt.get_cmap(CMAP)(0.0))
    if scatter is not None:
        ax.scatter(scatter[:, 0], scatter[:, 1], s=3, c="tab:cyan", lw=0)
    pad = 0.01 * (hi - lo)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    if circle:
        ax.add_patch(plt.Circle((0, 0), hi, fill=False, color="black", lw=1.0))
        ax.axis("off")
    else:  # a periodic square (the torus): opposite edges are identified
        ax.set_xticks([])
        ax.set_yticks([])


def panel_size(manifold):
    """(width, height) in inches of one panel: square for a plane figure, 2:1 for Mollweide."""
    return (
        (2 * PANEL_INCHES, PANEL_INCHES)
        if _manifold(manifold).figure_kind == "globe"
        else (PANEL_INCHES,) * 2
    )


def draw_panel(fig, rect, manifold: str, values=None, scatter=None, vmax=None, title=None, stock=False):
    """Draw one density/scatter panel into ``rect`` (figure fraction) of ``fig``; returns the axes."""
    vmax = vmax if vmax is not None else (float(np.nanmax(values)) if values is not None else 1.0) or 1.0
    M = _manifold(manifold)
    if M.figure_kind == "plane":
        ax = fig.add_axes(rect)
        _draw_plane(ax, M, values, vmax, scatter)
    else:  # "globe"
        ccrs = _cartopy()
        ax = _sphere_axes(fig, rect, ccrs)
        _draw_sphere(
            ax, values, values.shape[0] if values is not None else 0, ccrs, vmax, scatter, stock=stock
        )
    if title:
        ax.set_title(title, fontsize=11)
    return ax


def plot_panels(panels, manifold: str, path, suptitle=None, shared_scale=True, stock=False):
    """Draw ``panels`` side by side and save to ``path``.

    ``panels``: list of dicts with ``values`` (2-D array from :func:`density_values`, or None),
    optional ``scatter`` (``(N, 2)``: Poincare coordinates, or (lon, lat) in degrees) and ``title``.
    With ``shared_scale`` all panels use one colour scale (0 to the largest value shown).
    The figure is ``len(panels) * panel_size`` inches at ``DPI``.
    """
    w, h = panel_size(manifold)
    k = len(panels)
    fig = plt.figure(figsize=(w * k, h), dpi=DPI)
    vals = [p["values"] for p in panels if p.get("values") is not None]
    vmax_all = max((float(np.nanmax(v)) for v in vals), default=1.0) or 1.0
    top = 0.88 if any(p.get("title") for p in panels) or suptitle else 0.98
    for i, p in enumerate(panels):
        rect = [i / k + 0.01 / k, 0.02, 0.98 / k, top - 0.02]
        v = p.get("values")
        vmax = vmax_all if shared_scale or v is None else None
        draw_panel(fig, rect, manifold, v, p.get("scatter"), vmax, p.get("title"), stock=stock)
    if suptitle:
        fig.text(0.5, 0.985, suptitle, ha="center", va="top", fontsize=10)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def density_figure(
    log_probs: dict, manifold: str, path, res: int = 500, progress: bool = False, suptitle=None
):
    """Ground truth and model (or any named log-densities) side by side, one colour scale.

    ``log_probs``: ``{"title": callable}``; e.g. ``{"ground truth": density.log_prob, "model": f}``.
    On the hyperboloid the colour is the density pulled back to the tangent plane at the origin,
    ``p(x) J(log_o x)``; on the sphere it is the density w.r.t. area (Mollweide is equal-area).
    """
    panels = [dict(title=t, values=density_values(f, manifold, res, progress)) for t, f in log_probs.items()]
    return plot_panels(panels, manifold, path, suptitle=suptitle)


def to_plane(x, manifold):
    """Points to plot coordinates (:meth:`manifolds.Manifold.to_plot`): Poincare disk, (lon, lat) in
    degrees, or the torus's two angles."""
    return _manifold(manifold).to_plot(torch.as_tensor(x, dtype=torch.float64).detach().cpu())


def samples_figure(samples: dict, manifold: str, path):
    """Scatter plots of point sets side by side, e.g. ``{"model samples": x, "true samples": y}``."""
    panels = [dict(title=t, values=None, scatter=to_plane(x, manifold)) for t, x in samples.items()]
    return plot_panels(panels, manifold, path)


def _manifold_of(x, manifold):
    """The manifold (named, or an instance) whose ambient dimension is that of the points ``x``."""
    if not isinstance(manifold, str):
        return manifold
    cls = MANIFOLDS[manifold]
    return cls(next(d for d in range(1, x.shape[-1] + 1) if cls(d).ambient_dim == x.shape[-1]))


def chart_coordinates(x, manifold):
    """Points ``(N, ambient)`` to their exponential-chart coordinates ``(N, n)`` at the origin ``o``.

    The coordinates of ``log_o x`` in ``tangent_basis(o)`` (``e_1, ..., e_n`` on the sphere and the
    hyperboloid; the angles on the torus): geodesic distance and direction from the origin, any ``n``.
    """
    x = torch.as_tensor(x, dtype=torch.float64).detach().cpu()
    M = _manifold_of(x, manifold)
    o = M.origin(dtype=x.dtype)
    return M.coords(o, M.logmap(o, x), M.tangent_basis(o)).numpy()


def marginal_pairs(n: int):
    """Coordinate pairs shown by :func:`marginals_figure`: three pairs covering the first four axes."""
    if n == 1:
        return [(0,)]
    return [(0, 1), (0, 2), (1, 2)] if n == 3 else [(i, i + 1) for i in range(min(n - 1, 3))]


def marginals_figure(samples: dict, manifold: str, path, bins: int = 80):
    """Pairwise marginals of point sets in any dimension: one row per set (e.g. model and true
    samples), one column per coordinate pair of :func:`chart_coordinates`, as 2-D histograms on
    shared bins (a 1-D histogram when ``n = 1``), so that rows can be compared cell by cell."""
    coords = {t: chart_coordinates(x, manifold) for t, x in samples.items()}
    n = next(iter(coords.values())).shape[-1]
    pairs = marginal_pairs(n)
    ref = np.concatenate(list(coords.values()))
    lo, hi = np.quantile(ref, 0.005, axis=0), np.quantile(ref, 0.995, axis=0)
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    fig, axes = plt.subplots(len(coords), len(pairs), figsize=(3.2 * len(pairs), 3.0 * len(coords)),
                             squeeze=False, dpi=DPI)  # fmt: skip
    for row, (title, c) in zip(axes, coords.items(), strict=True):
        for ax, pair in zip(row, pairs, strict=True):
            if len(pair) == 1:
                ax.hist(c[:, 0], bins=bins, range=(lo[0], hi[0]), density=True, color="0.3")
                ax.set_xlabel("v_1")
            else:
                i, j = pair
                ax.hist2d(c[:, i], c[:, j], bins=bins, range=[[lo[i], hi[i]], [lo[j], hi[j]]], density=True,
                          cmap=CMAP)  # fmt: skip
                ax.set_xlabel(f"v_{i + 1}")
                ax.set_ylabel(f"v_{j + 1}")
            ax.set_title(f"{title}", fontsize=9)
    name = _manifold_of(torch.zeros(next(iter(samples.values())).shape[-1]), manifold).symbol
    fig.suptitle(f"{name}^{n}: pairwise marginals of the chart coordinates v = log_o(x)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def training_curve(history, path, losses=None, entropy=None, loss_label="training NLL (batch)"):
    """Training loss and test (or validation) NLL against epochs, with the true entropy as a floor.

    ``history``: evaluation records (``epoch``, ``test_nll`` or ``val_nll``); ``losses``:
    ``(epochs, loss)`` arrays, drawn on the same axis when the loss is an NLL and on a second axis
    otherwise (``loss_label`` not starting with "training NLL", e.g. the flow-matching loss).
    """
    fig, ax = plt.subplots(figsize=(6, 4), dpi=DPI)
    if losses is not None and len(losses[0]):
        lax = ax if loss_label.startswith("training NLL") else ax.twinx()
        lax.plot(
            losses[0], losses[1], lw=0.8, alpha=0.7, label=loss_label, color="C0" if lax is ax else "0.6"
        )
        if lax is not ax:
            lax.set_ylabel(loss_label)
            lax.legend(loc="upper right")
            ax.set_zorder(lax.get_zorder() + 1)  # the evaluations in front of the noisy batch loss
            ax.patch.set_visible(False)
    for key, label in [("test_nll", "test NLL"), ("val_nll", "validation NLL")]:
        pts = [(h["epoch"], h[key]) for h in history if key in h]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", label=label)
    if history:
        entropy = entropy if entropy is not None else history[-1].get("entropy")
    if entropy is not None:
        ax.axhline(entropy, color="k", ls="--", lw=1, label=f"true entropy {entropy:.3f} (floor)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per sample")
    ax.legend(
        loc="upper left" if losses is not None and not loss_label.startswith("training NLL") else "best"
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def make_gif(frames, path, duration_ms: int = 200):
    """Assemble PNG frames (in the given order) into an animated GIF; returns the frame count."""
    from PIL import Image

    frames = [Path(f) for f in frames]
    if not frames:
        return 0
    images = [Image.open(f).convert("P", palette=Image.Palette.ADAPTIVE) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0, disposal=2)
    return len(images)


#: Earth maps show the top this-many nats of the log-density (sharp models hide everything else on a
#: linear scale).
LOG_RANGE = 8.0


def top_log_density(values, log_range: float = LOG_RANGE):
    """Density values as log-density above ``max - log_range`` (NaN, i.e. transparent, below a quarter
    nat of that floor), so that the continents under a map stay visible."""
    import numpy as np

    out = np.log(np.maximum(values, 1e-300)) - (np.log(values.max()) - log_range)
    out[out < 0.25] = np.nan
    return out
