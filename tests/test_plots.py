"""The one plotting module: atomic PNG writes, figures closed, the report's style kept to its figures."""
import os
import subprocess
import sys

import numpy as np
import pytest

from resnetlab import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _figure(title="loss"):
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    ax.set_title(title)
    return fig


def test_save_figure_is_atomic_and_closes_the_figure(tmp_path):
    plt = plots.pyplot()
    path = tmp_path / "sub" / "fig.png"
    fig = _figure()
    assert plots.save_figure(fig, str(path)) == str(path)
    assert path.read_bytes()[:8] == PNG_MAGIC and not plt.fignum_exists(fig.number)
    before = path.read_bytes()
    bad = _figure(r"$\frac$")  # mathtext that cannot be parsed: drawing fails while saving
    with pytest.raises(ValueError):
        plots.save_figure(bad, str(path))
    assert path.read_bytes() == before and os.listdir(path.parent) == ["fig.png"]  # old file, no temporary
    assert not plt.fignum_exists(bad.number)


def test_report_style_stays_with_report_figures(tmp_path, monkeypatch):
    plt = plots.pyplot()
    size = plt.rcParams["font.size"]
    seen = []
    original = plots.save_figure

    def spy(fig, path, dpi=plots.DPI):  # looks at the figure, then saves it as usual
        seen.append((fig.axes[0].title.get_fontsize(), dpi))
        return original(fig, path, dpi)

    monkeypatch.setattr(plots, "save_figure", spy)
    path = tmp_path / "p.png"
    plots.path_ratios([(dict(color="tab:blue", label="ResNet-8 (A)"), [0.5, 0.25])], str(path))
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert seen == [(plots.REPORT_STYLE["axes.titlesize"], plots.REPORT_DPI)]
    assert plt.rcParams["font.size"] == size  # the report's font sizes did not leak into later figures


def test_matplotlib_is_imported_only_to_draw():
    code = ("import sys, resnetlab.analysis, resnetlab.landscape, resnetlab.report, resnetlab.summary, "
            "resnetlab.study; print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.strip() == "False"


def test_curves_of_repeats_are_drawn_as_mean_with_their_min_max_band():
    import numpy as np
    plt = plots.pyplot()
    fig, ax = plt.subplots()
    values = np.array([[1.0, 4.0, 2.0], [3.0, 2.0, 2.0], [2.0, 3.0, 5.0]])  # 3 repeats x 3 layers
    plots._line_with_band(ax, np.arange(3), values, {"color": "tab:blue", "label": "net"})
    (line,) = ax.lines
    assert line.get_ydata().tolist() == pytest.approx([2.0, 3.0, 3.0])  # the mean over repeats
    (band,) = ax.collections
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(1.0) and ys.max() == pytest.approx(5.0)  # lowest and highest repeat
    ax.clear()
    plots._line_with_band(ax, np.arange(3), values[0], {"color": "tab:blue"})  # one run: a line, no band
    assert len(ax.lines) == 1 and not ax.collections
    plt.close(fig)


def test_cli_contours_are_log_spaced_so_the_basin_shows_beside_the_walls(tmp_path):
    # A plain-net-like landscape: a basin near 0.5 whose walls reach 1e6 at the corners.
    axis = np.linspace(-1, 1, 9)
    a, b = np.meshgrid(axis, axis, indexing="ij")
    loss = 0.5 * np.exp(14.5 * (a ** 2 + b ** 2) / 2)
    paths = [str(tmp_path / "contour.png"), str(tmp_path / "surface.png")]
    levels = plots.plot_2d({"alphas": axis, "betas": axis, "loss": loss}, *paths, "plain")
    assert levels[0] == pytest.approx(loss.min()) and levels[-1] == pytest.approx(loss.max())
    ratios = levels[1:] / levels[:-1]
    assert np.allclose(ratios, ratios[0])  # evenly spaced in log scale
    assert (levels < 10 * loss.min()).sum() >= 3  # linear levels would put none in the basin
    assert all(open(p, "rb").read(8) == PNG_MAGIC for p in paths)
