"""Every figure of the package, drawn with matplotlib (Agg) and saved as PNG by one :func:`save_figure`:
the study report's figures (:mod:`resnetlab.report` turns run records into their series), ``resnetlab
analyze --plot`` (:func:`plot_results`) and ``resnetlab landscape`` (:func:`plot_1d`, :func:`plot_2d`).
matplotlib is imported here only, and only when a figure is drawn (:func:`pyplot`).
"""
from __future__ import annotations

import functools

import numpy as np

from .io import atomic_path

DPI = 120
"""Resolution of the analyze and landscape figures."""
REPORT_DPI = 110
"""Resolution of the report's figures (they are embedded in ``report.html``)."""
REPORT_STYLE = {"font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8, "figure.dpi": REPORT_DPI}


@functools.cache
def pyplot():
    """``matplotlib.pyplot`` on the Agg backend: files only, no display needed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str, dpi: int = DPI) -> str:
    """Save ``fig`` as a PNG atomically (cropped to what it draws), close it and return ``path``."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        pyplot().close(fig)
    return path


def _report_style(draw):
    """Draw a report figure with the report's font sizes, without changing them for other figures."""
    @functools.wraps(draw)
    def wrapped(*args, **kwargs):
        with pyplot().rc_context(REPORT_STYLE):
            return draw(*args, **kwargs)
    return wrapped


# --------------------------------------------------------------------------------------------- report

@_report_style
def training_curves(panels, path: str) -> str:
    """The paper's Figure 6: training error (dashed) and test error (solid) against iterations.

    ``panels``: one ``(title, nets)`` per family, ``nets`` a list of ``(label, color, train, test)``, each
    curve ``(steps, mean error %, lowest, highest)`` over repeats; the band between lowest and highest is
    shaded where repeats differ.
    """
    fig, axes = pyplot().subplots(1, len(panels), figsize=(4.0 * len(panels) + 0.5, 3.6), sharey=True, squeeze=False)
    for ax, (title, nets) in zip(axes[0], panels):
        for name, color, (s, e, lo, hi), (ts, te, tlo, thi) in nets:
            if len(s):
                ax.plot(s, e, linestyle="--", linewidth=1.0, color=color, alpha=0.85, label=f"{name} train")
                if np.any(hi > lo):
                    ax.fill_between(s, lo, hi, color=color, alpha=0.12, linewidth=0)
            if len(ts):
                ax.plot(ts, te, linestyle="-", linewidth=2.0, color=color, marker="o" if len(ts) <= 12 else None,
                        markersize=3, label=f"{name} test")
                if np.any(thi > tlo):
                    ax.fill_between(ts, tlo, thi, color=color, alpha=0.18, linewidth=0)
        ax.set(title=title, xlabel="iteration")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", frameon=False)
    axes[0][0].set_ylabel("error (%)")
    fig.suptitle("Training (dashed) and test (solid) error", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, REPORT_DPI)


def _line_with_band(ax, x, values, style, **line) -> None:
    """Plot the mean over repeats (the rows of ``values``) and, with two or more, their min-max band."""
    values = np.atleast_2d(np.asarray(values, dtype=float))
    ax.plot(x, values.mean(0), **line, **style)
    if len(values) > 1:
        ax.fill_between(x, values.min(0), values.max(0), color=style.get("color"), alpha=0.15, linewidth=0)


@_report_style
def layer_responses(curves, path: str,
                    title: str = "Responses of the 3x3 layers (std of the BN output), final checkpoints") -> str:
    """The paper's Figure 7: std of each 3x3 layer's BN output, in layer order (top) and sorted (bottom).

    ``curves``: ``(style, values)`` per network, ``style`` the keyword arguments of its line, ``values`` one
    row per repeat (the mean is drawn, with the min-max band over repeats).
    """
    fig, (top, bottom) = pyplot().subplots(2, 1, figsize=(8.5, 6.0))
    for style, values in curves:
        values = np.atleast_2d(values)
        x = np.arange(1, values.shape[1] + 1)
        _line_with_band(top, x, values, style, marker=".", markersize=4, linewidth=1.2)
        _line_with_band(bottom, x, -np.sort(-values, axis=1), style, marker=".", markersize=4, linewidth=1.2)
    top.set(title=title, xlabel="layer index (original order)", ylabel="std")
    bottom.set(xlabel="layer index (sorted by magnitude)", ylabel="std")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    top.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return save_figure(fig, path, REPORT_DPI)


@_report_style
def gradient_flow(panels, path: str, ylabel: str = "gradient norm per block") -> str:
    """A per-block gradient measure, one panel per training step: ``panels`` holds ``(title, curves)``, the
    curves ``(style, values)`` as in :func:`layer_responses`."""
    fig, axes = pyplot().subplots(1, len(panels), figsize=(4.0 * len(panels) + 1.6, 3.6), sharey=True, squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels):
        for style, values in curves:
            # x: position in the network, so that nets of different depths line up
            x = np.linspace(0, 1, np.atleast_2d(values).shape[1])
            _line_with_band(ax, x, values, style, marker=".", markersize=4, linewidth=1.2)
        ax.set(yscale="log", title=title, xlabel="relative depth (0 = stem, 1 = classifier)")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return save_figure(fig, path, REPORT_DPI)


@_report_style
def first_layer_gradient(panels, path: str) -> str:
    """The first layer's gradient norm against depth, one panel per step: ``panels`` holds ``(title,
    lines)``, the lines ``(label, color, depths, norms)``, one per family."""
    fig, axes = pyplot().subplots(1, len(panels), figsize=(3.4 * len(panels) + 0.5, 3.2), sharey=True, squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels):
        for label, color, depths, norms in lines:
            ax.plot(depths, norms, marker="o", linewidth=1.5, color=color, label=label)
        ax.set(yscale="log", xlabel="depth (layers)", title=title)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("first layer's gradient norm")
    axes[0][-1].legend(frameon=False)
    fig.tight_layout()
    return save_figure(fig, path, REPORT_DPI)


@_report_style
def path_ratios(curves, path: str) -> str:
    """||F(x)|| / ||shortcut(x)|| per residual block: ``curves`` of ``(style, ratios)``."""
    fig, ax = pyplot().subplots(figsize=(8.0, 3.6))
    for style, values in curves:
        _line_with_band(ax, np.arange(np.atleast_2d(values).shape[1]), values, style, marker=".", linewidth=1.2)
    ax.axhline(1.0, color="gray", linewidth=0.8, linestyle=":")
    ax.set(ylim=(0, None), xlabel="residual block (forward order)", ylabel="‖F(x)‖ / ‖shortcut(x)‖",
           title="How much each residual branch adds to its shortcut (final checkpoints)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return save_figure(fig, path, REPORT_DPI)


def log_levels(losses, n: int) -> np.ndarray:
    """``n`` contour levels spaced evenly in log scale from the smallest to the largest positive finite
    value of ``losses`` (arrays)."""
    # Losses far from the minimum reach 1e4-1e7 for a plain net while the basin sits near 1: log-spaced
    # levels show the basin and the walls alike, where linear ones would all sit on the walls.
    allv = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in losses])
    allv = allv[np.isfinite(allv) & (allv > 0)]
    lo, hi = float(allv.min()), float(allv.max())
    return np.geomspace(lo, max(hi, lo * 1.01), n)


@_report_style
def landscape_contours(nets, path: str) -> str:
    """Loss contours of networks side by side on shared levels: ``nets`` holds ``(label, result)``, the
    result a 2-D grid of :mod:`resnetlab.landscape` (``alphas``, ``betas``, ``loss``)."""
    plt = pyplot()
    from matplotlib.colors import LogNorm
    fig, axes = plt.subplots(1, len(nets), figsize=(4.0 * len(nets) + 1.2, 4.0), squeeze=False, layout="constrained")
    levels = log_levels([res["loss"] for _, res in nets], 16)  # shared by both panels
    lo, hi = levels[0], levels[-1]
    for ax, (label, res) in zip(axes[0], nets):
        a, b = np.asarray(res["alphas"], dtype=np.float64), np.asarray(res["betas"], dtype=np.float64)
        loss = np.clip(np.asarray(res["loss"], dtype=np.float64), lo, hi).reshape(len(a), len(b))
        cs = ax.contour(a, b, loss.T, levels=levels, cmap="viridis", linewidths=0.9, norm=LogNorm(vmin=lo, vmax=hi))
        ax.clabel(cs, cs.levels[::3], fontsize=6, fmt="%.3g")
        ax.plot([0], [0], "r+", markersize=8)
        ax.set(title=label, xlabel="direction 1 (α)", aspect="equal")
    axes[0][0].set_ylabel("direction 2 (β)")
    bar = fig.colorbar(cs, ax=list(axes[0]), shrink=0.9, label="training loss (log-spaced levels)")
    bar.minorticks_off()
    bar.set_ticks(levels[::3], labels=[f"{v:.3g}" for v in levels[::3]])
    fig.suptitle("Training loss around the final weights (same levels in both panels)", fontsize=10)
    return save_figure(fig, path, REPORT_DPI)


# --------------------------------------------------------------------------------------------- analyze

def result_label(result: dict) -> str:
    """A legend label for one result: the model and its shortcut option."""
    return f"{result['model_config']['name']} (shortcut {result.get('shortcut')}): {result['source']}"


def _plot_paths(results: list[dict], path: str) -> None:
    names = [r["block"] for r in results[0]["paths"]]
    fig, axes = pyplot().subplots(2, 1, figsize=(max(6, 0.35 * len(names) + 2), 6), sharex=True)
    for res in results:
        rows = [(names.index(r["block"]), r) for r in res["paths"] if r["ratio"] is not None and r["block"] in names]
        for ax, key in zip(axes, ("ratio", "cosine")):
            ax.plot([i for i, _ in rows], [r[key] for _, r in rows], "o-", ms=4, label=result_label(res))
    for ax, level, ylabel in zip(axes, (1, 0), ("||F(x)|| / ||shortcut(x)||", "cos(F(x), shortcut(x))")):
        ax.axhline(level, color="gray", lw=0.8)
        ax.set_ylabel(ylabel)
        ax.legend(loc="best", fontsize=7)
    axes[0].set_title("residual branch vs shortcut, per block (mean over samples)")
    axes[1].set_xlabel("block")
    axes[1].set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def _plot_gradients(results: list[dict], path: str) -> None:
    lesions = [r for r in results if r.get("lesion")]
    n_panels = 3 if lesions else 2
    width = max(6, 0.2 * max(len(r["layers"]) for r in results) + 2)
    fig, axes = pyplot().subplots(n_panels, 1, figsize=(width, 3 * n_panels))
    for res in results:
        for ax, key, style in zip(axes, ("layers", "blocks"), ("o-", "s-")):
            ax.semilogy(range(len(res[key])), [r["grad_norm"] for r in res[key]], style, ms=3, label=result_label(res))
    axes[0].set(xlabel="conv/linear layer (forward order)", ylabel="||dL/dW||",
                title="gradient norms (train-mode BN, cross-entropy)")
    groups = [r["group"] for r in results[0]["blocks"]]
    axes[1].set_xticks(range(len(groups)), groups, rotation=90, fontsize=7)
    axes[1].set(xlabel="group (all its parameters)", ylabel="gradient norm")
    for ax in axes[:2]:
        ax.legend(fontsize=7)
    if lesions:
        blocks = [r["block"] for r in lesions[0]["lesion"]]
        bar = 0.8 / len(lesions)
        for k, res in enumerate(lesions):
            rows = res["lesion"]
            xs = [i + (k - (len(lesions) - 1) / 2) * bar for i in range(len(rows))]
            ok = [(x, r["delta"]) for x, r in zip(xs, rows) if r["delta"] is not None]
            axes[2].bar([x for x, _ in ok], [100 * d for _, d in ok], width=bar, label=result_label(res))
            for x, r in zip(xs, rows):
                if r["delta"] is None:
                    axes[2].text(x, 0, "n/a", ha="center", va="bottom", fontsize=7, color="gray")
        axes[2].axhline(0, color="gray", lw=0.8)
        axes[2].set_xticks(range(len(blocks)), blocks, rotation=90, fontsize=7)
        axes[2].set(xlabel="dropped block", ylabel="test accuracy change (points)")
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def _plot_responses(results: list[dict], path: str) -> None:
    curves = [({"label": result_label(res)}, [r["std"] for r in res["responses"]]) for res in results]
    layer_responses(curves, path, title="std of the 3x3 layer responses (He et al. 2015, Fig. 7)")


def plot_results(results: list[dict], path: str) -> None:
    """Draw one or more results of the same analysis (twins overlaid, one legend entry each) into a PNG."""
    if not results:
        raise ValueError("nothing to plot")
    kinds = {r["analysis"] for r in results}
    if len(kinds) != 1:
        raise ValueError(f"cannot draw different analyses into one figure: {', '.join(sorted(kinds))}")
    {"paths": _plot_paths, "gradients": _plot_gradients, "responses": _plot_responses}[kinds.pop()](results, path)


# --------------------------------------------------------------------------------------------- landscape

def plot_1d(res: dict, path: str, title: str) -> None:
    """Loss and accuracy along one filter-normalised direction."""
    fig, ax1 = pyplot().subplots(figsize=(6, 4))
    ax1.plot(res["alphas"], res["loss"], "-", color="tab:blue", label="loss")
    ax1.set(xlabel="step along the filter-normalised direction", ylabel="cross-entropy loss", title=title)
    ax2 = ax1.twinx()
    ax2.plot(res["alphas"], 100 * np.asarray(res["acc"]), "--", color="tab:red", label="accuracy")
    ax2.set_ylabel("accuracy (%)")
    ax1.legend(handles=ax1.get_lines() + ax2.get_lines(), loc="upper center", fontsize=8)  # both axes' lines
    save_figure(fig, path)


def plot_2d(res: dict, contour_path: str, surface_path: str, title: str) -> np.ndarray:
    """The loss over a plane of two directions: contours on log-spaced levels (:func:`log_levels`, as in the
    report) into one PNG, a 3-D surface into another. Returns the contour levels."""
    plt = pyplot()
    from matplotlib.colors import LogNorm
    a, b = np.meshgrid(res["alphas"], res["betas"], indexing="ij")
    loss = np.asarray(res["loss"], dtype=np.float64)
    levels = log_levels([loss], 25)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    cs = ax.contour(a, b, np.clip(loss, levels[0], levels[-1]), levels=levels, cmap="viridis",
                    norm=LogNorm(vmin=levels[0], vmax=levels[-1]))
    ax.clabel(cs, cs.levels[::4], inline=True, fontsize=6, fmt="%.3g")
    ax.plot([0], [0], "r+", ms=10, label="the model")
    ax.set(xlabel="direction 1", ylabel="direction 2", title=title + ": loss contours")
    ax.legend(fontsize=8)
    fig.colorbar(cs, ax=ax, label="loss")
    save_figure(fig, contour_path)

    fig = plt.figure(figsize=(6, 5))
    ax = fig.add_subplot(projection="3d")
    surf = ax.plot_surface(a, b, loss, cmap="viridis", linewidth=0, antialiased=True)
    ax.set(xlabel="direction 1", ylabel="direction 2", zlabel="loss", title=title + ": loss surface")
    fig.colorbar(surf, ax=ax, shrink=0.6, label="loss")
    save_figure(fig, surface_path)
    return levels
