"""The study report (figures, ``report.md``, a self-contained ``report.html``, raw results) from *run records*,
one per trained run, as :mod:`resnetlab.study` collects them::

    {"name": "resnet20-A-r0", "model": "resnet20", "depth": 20, "option": "A", "repeat": 0, "seed": 0,
     "dir": "runs/resnet20-A-r0",                 # relative to the report folder
     "final": {...final.json...}, "events": [...metrics.jsonl...],
     "analysis": {"layer_responses": [[layer, std], ...],
                  "grad_norms": {"0": [[block, norm], ...], "100": [...]},   # by training step
                  "path_stats": [{...}, ...], "projection_stats": [{...}, ...]}}

:func:`write_report` writes the report folder, atomically. ``report.html`` is ``report.md`` rendered by the
``markdown`` package with the figures embedded, so the two always say the same thing.
"""
from __future__ import annotations

import base64
import csv
import html
import math
import os
from collections import defaultdict

import markdown
import numpy as np

from . import plots
from .blocks import SHORTCUTS, TRANSITIONS
from .io import atomic_write, format_table, write_json, write_text

DEPTH_COLORS = ("tab:orange", "tab:blue", "tab:red", "tab:green", "tab:purple", "tab:brown", "tab:pink")
FAMILY_COLORS = {"plain": "black", "residual-A": "tab:blue", "residual-B": "tab:red", "residual-C": "tab:green",
                 "residual-A:none": "tab:purple", "residual-B:none": "tab:brown",
                 "residual-A:avgpool-projection": "tab:olive", "residual-B:avgpool-projection": "tab:cyan"}
DEPTH_STYLES = ("-", "--", ":", "-.")


# --------------------------------------------------------------------------------------------- naming

def option_fields(option: str) -> dict:
    """A study's network option as model options: ``"A"`` -> ``{"shortcut": "A"}``, ``"A:none"`` ->
    ``{"shortcut": "A", "transition": "none"}`` (identity shortcuts, none where the shape changes)."""
    shortcut, _, transition = option.partition(":")
    if shortcut not in SHORTCUTS:
        raise ValueError(f"unknown shortcut option {shortcut!r} in {option!r}; valid: {', '.join(SHORTCUTS)} "
                         f"(none = plain net), optionally with ':TRANSITION', e.g. A:none")
    if transition and transition not in TRANSITIONS:
        raise ValueError(f"unknown transition {transition!r} in {option!r}; valid: {', '.join(TRANSITIONS)}")
    return {"shortcut": shortcut, **({"transition": transition} if transition else {})}


_SHORTCUT_WORDS = {"A": "zero-padded identity shortcuts", "B": "identity shortcuts, projections where the shape "
                   "changes", "C": "projection shortcuts everywhere", "none": "no shortcuts (the plain net)"}
_TRANSITION_WORDS = {"zero-pad": "zero-padded identities", "projection": "1x1 projections",
                     "avgpool-projection": "average-pool + 1x1 projections (ResNet-D)", "none": "none"}


def describe_option(option: str) -> str:
    """The option in words, e.g. ``"A:none"`` -> ``"identity shortcuts, none where the shape changes"``."""
    fields = option_fields(option)
    if "transition" not in fields:
        return _SHORTCUT_WORDS[fields["shortcut"]]
    within = {"A": "identity shortcuts", "B": "identity shortcuts", "C": "projection shortcuts",
              "none": "no shortcuts"}[fields["shortcut"]]
    return f"{within}, {_TRANSITION_WORDS[fields['transition']]} where the shape changes"


def family(option: str) -> str:
    """``"plain"`` for the net without shortcuts, ``"residual-<option>"`` otherwise."""
    return "plain" if option == "none" else f"residual-{option}"


def net_label(depth: int, option: str) -> str:
    """The paper's names: ``plain-20``, ``ResNet-20 (A)``, ``ResNet-20 (A:none)``."""
    return f"plain-{depth}" if option == "none" else f"ResNet-{depth} ({option})"


OPTION_ORDER = ("none", "A", "B", "C")  # plain first, then the residual options


def _option_rank(option: str) -> tuple[int, bool, str]:
    base, _, transition = option.partition(":")
    rank = OPTION_ORDER.index(base) if base in OPTION_ORDER else len(OPTION_ORDER)
    # transition variants right after their option; ties broken by name, so that the order of the report's
    # rows and figures never depends on the order (or the string hashing) of a set of options
    return rank, bool(transition), option


def family_order(options) -> list[str]:
    return sorted(set(options), key=_option_rank)


def _groups(records) -> dict[tuple[int, str], list[dict]]:
    """(depth, option) -> records of its repeats, in a stable order (depth, then plain/A/B/C)."""
    out = defaultdict(list)
    for r in sorted(records, key=lambda r: (r["depth"], _option_rank(r["option"]), r["repeat"])):
        out[(r["depth"], r["option"])].append(r)
    return dict(out)


# --------------------------------------------------------------------------------------------- numbers

TAIL_FRACTION = 0.1  # the report's training error: the logged intervals of this last fraction of the iterations


def tail_train_error(events, steps: int, fraction: float = TAIL_FRACTION) -> float | None:
    """Mean training error of the logged intervals that end in the last ``fraction`` of ``steps`` (at least
    the last one). Steadier than the last interval alone, whose few hundred images move it by points."""
    train = [e for e in events if e.get("kind") == "train" and e.get("error") is not None]
    if not train:
        return None
    tail = [e["error"] for e in train if e["step"] > (1 - fraction) * steps] or [train[-1]["error"]]
    return float(np.mean(tail))


def mean_std(values) -> tuple[float, float] | None:
    """Mean and sample standard deviation (0 for a single value); None when no value is known."""
    arr = np.asarray([float(v) for v in values if v is not None], dtype=np.float64)
    if not len(arr):
        return None
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; beyond, the Cornish-Fisher expansion
# around the normal quantile is accurate to 1e-4.
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788,
         2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639,
         2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (the 95% two-sided interval)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def paired_interval(a, b) -> dict | None:
    """The paired difference ``a - b`` of twins (same seeds, in the same order): mean, its 95% t-interval
    and the number of pairs; ``None`` with fewer than two complete pairs."""
    d = np.asarray([float(x) - float(y) for x, y in zip(a, b) if x is not None and y is not None], dtype=np.float64)
    if len(d) < 2:
        return None
    half = t975(len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return {"mean": float(d.mean()), "low": float(d.mean() - half), "high": float(d.mean() + half), "n": len(d)}


def paired_rows(records) -> list[dict]:
    """For each depth, every residual option against the plain net and the residual options against each
    other: paired differences (by repeat) of the training and test error."""
    by = {k: {r["repeat"]: r["final"] for r in runs} for k, runs in _groups(records).items()}
    rows = []
    for depth in sorted({d for d, _ in by}):
        residual = family_order(o for d, o in by if d == depth and o != "none")
        pairs = [(o, "none") for o in residual if (depth, "none") in by]
        pairs += [(x, y) for i, y in enumerate(residual) for x in residual[i + 1:]]
        for x, y in pairs:
            reps = sorted(set(by[(depth, x)]) & set(by[(depth, y)]))
            row = {"depth": depth, "a": x, "b": y, "n": len(reps)}
            for metric in ("train_error", "test_error"):
                row[metric] = paired_interval([by[(depth, x)][k].get(metric) for k in reps],
                                              [by[(depth, y)][k].get(metric) for k in reps])
            if row["train_error"] or row["test_error"]:
                rows.append(row)
    return rows


def _interval_text(iv) -> str:
    return "n/a" if iv is None else f"{100 * iv['mean']:+.2f} [{100 * iv['low']:+.2f}, {100 * iv['high']:+.2f}]"


def _fmt_mean(values, scale=100.0, digits=2, best=False) -> str:
    """Mean ± std over repeats, or with ``best`` the paper's "best (mean±std)" for errors; a single value when
    there is one run."""
    vals = [v for v in values if v is not None]
    if len(vals) < 2:
        return f"{scale * float(vals[0]):.{digits}f}" if vals else "n/a"
    m, s = mean_std(vals)
    if best:
        return f"{scale * min(vals):.{digits}f} ({scale * m:.{digits}f}±{scale * s:.{digits}f})"
    return f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"


_FINAL_KEYS = ("params", "steps", "train_loss", "train_error", "train_error_last", "val_error", "test_error",
               "test_top5_error", "wall_time_s")


def results_rows(records) -> list[dict]:
    """One flat row per run: what ``results.csv`` holds."""
    return [{"run": r["name"], "model": r["model"], "depth": r["depth"], "option": r["option"],
             "family": family(r["option"]), "repeat": r["repeat"], "seed": r["seed"],
             **{k: r["final"].get(k) for k in _FINAL_KEYS}, "dir": r["dir"]}
            for runs in _groups(records).values() for r in runs]


def summary_rows(records) -> list[dict]:
    """One row per (depth, option), aggregated over repeats as ``{"mean", "std"}``: ``results.json``'s summary."""
    def spread(finals, key):
        stats = mean_std([f.get(key) for f in finals])
        return None if stats is None else {"mean": stats[0], "std": stats[1]}

    rows = []
    for (depth, option), runs in _groups(records).items():
        finals = [r["final"] for r in runs]
        rows.append({"depth": depth, "option": option, "network": net_label(depth, option),
                     "params": finals[0].get("params"), "repeats": len(runs),
                     **{k: spread(finals, k) for k in ("train_error", "val_error", "test_error")},
                     "best_test_error": min((f["test_error"] for f in finals if f.get("test_error") is not None),
                                            default=None),
                     "wall_time_s": spread(finals, "wall_time_s")})
    return rows


def results_table(records) -> tuple[list[str], list[list[str]]]:
    """The main table: errors in %, mean ± std over repeats; test error as best (mean±std)."""
    head = ["depth", "network", "params", "train error (%)", "val error (%)", "test error (%)", "wall time (s)", "runs"]
    rows = []
    for (depth, option), runs in _groups(records).items():
        finals = [r["final"] for r in runs]
        params = finals[0].get("params")
        rows.append([str(depth), net_label(depth, option), f"{params:,}" if params is not None else "n/a",
                     _fmt_mean([f.get("train_error") for f in finals]),
                     _fmt_mean([f.get("val_error") for f in finals]),
                     _fmt_mean([f.get("test_error") for f in finals], best=True),
                     _fmt_mean([f.get("wall_time_s") for f in finals], scale=1.0, digits=1),
                     ", ".join(f"[{r['name']}]({r['dir']}/)" for r in runs)])
    return head, rows


def _mean_of(runs, get):
    vals = [v for v in (get(r) for r in runs) if v is not None]
    return float(np.mean(vals)) if vals else None


def _train_means(records) -> dict[tuple[int, str], float]:
    """(depth, option) -> the mean training error over its repeats, where one is known."""
    means = {k: _mean_of(runs, lambda r: r["final"].get("train_error")) for k, runs in _groups(records).items()}
    return {k: m for k, m in means.items() if m is not None}


def degradation_text(records) -> list[str]:
    """In words: does the deeper plain net train worse than the shallower one, and the residual nets?"""
    groups, means = _groups(records), _train_means(records)
    depths = sorted({d for d, _ in groups})
    if len(depths) < 2:
        return ["Only one depth was trained, so degradation cannot be judged."]
    lo, hi = depths[0], depths[-1]
    lines = []
    for option in family_order([o for _, o in groups]):
        if (lo, option) not in means or (hi, option) not in means:
            continue
        ea, eb = 100 * means[(lo, option)], 100 * means[(hi, option)]
        name_a, name_b = net_label(lo, option), net_label(hi, option)
        if option != "none":
            verdict = "better" if eb < ea else "worse" if eb > ea else "the same"
            lines.append(f"With shortcut option {option}, the deeper {name_b} trains {verdict} than {name_a} "
                         f"({eb:.2f}% vs {ea:.2f}% training error).")
        elif eb > ea:
            lines.append(f"**Degradation:** the deeper plain net {name_b} ends with a *higher* training error "
                         f"than {name_a} ({eb:.2f}% vs {ea:.2f}%): the extra layers made the plain net "
                         f"harder to optimise, the pattern of the paper's Figure 6 (left).")
        else:
            lines.append(f"No degradation at this budget: {name_b} trains as well as or better than {name_a} "
                         f"({eb:.2f}% vs {ea:.2f}% training error).")
    if lines and max(len(v) for v in groups.values()) == 1:
        lines.append("(One run per network: differences of a point or two can be noise between seeds; "
                     "`--repeats` gives mean ± std.)")
    return lines or ["No complete plain/residual pair across depths to compare."]


def figure6_checks(records) -> dict:
    """The three patterns of the paper's Figure 6, judged on the mean training error of the shallowest and the
    deepest depth: ``degradation`` (the deeper plain net trains worse), ``residual_beats_plain`` (at the deeper
    depth every residual option trains better than the plain net) and ``deeper_residual`` (every residual
    option trains at least as well at the deeper depth; ``deeper_residual_by_option`` per option). Each is
    True/False, or None when the grid lacks the nets; ``errors`` holds the numbers they were judged on."""
    agg = _train_means(records)
    depths = sorted({d for d, _ in agg})
    residual = family_order(o for _, o in agg if o != "none")
    out = {"degradation": None, "residual_beats_plain": None, "deeper_residual": None,
           "errors": {net_label(d, o): e for (d, o), e in agg.items()}}
    if not depths:
        return out
    lo, hi = depths[0], depths[-1]
    if lo != hi and (lo, "none") in agg and (hi, "none") in agg:
        out["degradation"] = agg[(hi, "none")] > agg[(lo, "none")]
    if (hi, "none") in agg and residual and all((hi, o) in agg for o in residual):
        out["residual_beats_plain"] = all(agg[(hi, o)] < agg[(hi, "none")] for o in residual)
    by_option = {o: agg[(hi, o)] <= agg[(lo, o)] for o in residual if lo != hi and (lo, o) in agg and (hi, o) in agg}
    if residual and len(by_option) == len(residual):
        out["deeper_residual"] = all(by_option.values())
    out["deeper_residual_by_option"] = by_option
    return out


def _analysis(run) -> dict:
    return run.get("analysis") or {}


def _mean_response(run) -> float:
    """The mean std of the run's 3x3 layer responses; nan without them."""
    return np.mean([v for _, v in _analysis(run).get("layer_responses", [])] or [np.nan])


def _input_fraction(run, step: str):
    """The signal reaching the input, as a fraction of the signal at the last block's output."""
    sig = (_analysis(run).get("signal") or {}).get(step)
    return sig[0][1] / sig[-1][1] if sig and sig[-1][1] else None


def claims_text(records) -> list[str]:
    """The paper's claims, each judged in words from this run's own numbers, including when one fails."""
    groups, means = _groups(records), _train_means(records)
    depths = sorted({d for d, _ in groups})
    lines = []
    if len(depths) > 1:
        lo, hi = depths[0], depths[-1]
        lines = degradation_text(records)[:1]
        for option in family_order([o for _, o in groups if o != "none"]):
            ea, eb = means.get((lo, option)), means.get((hi, option))
            if ea is None or eb is None:
                continue
            held = eb <= ea
            lines.append(f"**Deeper residual net, option {option}:** {net_label(hi, option)} ends with "
                         f"{'a lower or equal' if held else 'a higher'} training error than {net_label(lo, option)} "
                         f"({100 * eb:.2f}% vs {100 * ea:.2f}%): the paper's Figure 6 (right), where the deeper "
                         f"ResNet trains better, {'holds' if held else 'does not hold'} here.")
    steps = _grad_steps(records)
    for (depth, option), runs in groups.items():
        plain = groups.get((depth, "none"))
        if option == "none" or not plain:
            continue
        name, pname = net_label(depth, option), net_label(depth, "none")
        err, p_err = means.get((depth, option)), means.get((depth, "none"))
        if err is not None and p_err is not None:
            held = err < p_err
            lines.append(f"**Residual vs plain at depth {depth}:** {name} ends with a {'lower' if held else 'higher'} "
                         f"training error than {pname} ({100 * err:.2f}% vs {100 * p_err:.2f}%): the paper's "
                         f"claim {'holds' if held else 'does not hold'} here.")
        resp, p_resp = _mean_of(runs, _mean_response), _mean_of(plain, _mean_response)
        if np.isfinite(resp) and np.isfinite(p_resp):
            held = resp < p_resp
            lines.append(f"**Layer responses (Fig. 7), depth {depth}:** the 3x3 layers of {name} respond "
                         f"{'more weakly' if held else 'more strongly'} than those of {pname} (mean std "
                         f"{resp:.3f} vs {p_resp:.3f}): the paper's observation "
                         f"{'holds' if held else 'does not hold'} here.")
        for step in dict.fromkeys(steps[:1] + steps[-1:]):  # the first and the last measured step
            f_res = _mean_of(runs, lambda r: _input_fraction(r, step))
            f_plain = _mean_of(plain, lambda r: _input_fraction(r, step))
            if f_res is None or f_plain is None:
                continue
            held = f_res > f_plain
            lines.append(f"**Gradient signal toward the input, depth {depth}, {_step_title(step)}:** "
                         f"||dL/dx|| at the input over ||dL/dx|| at the last block's output is {f_res:.3g} in "
                         f"{name} and {f_plain:.3g} in {pname}: relative to the top, "
                         f"{'more' if held else 'less'} of the signal reaches the input of the residual net"
                         f"{'' if held else ', unlike the vanishing-gradient story'}.")
    return lines


# --------------------------------------------------------------------------------------------- figures

def _mean_curve(runs, kind: str, split: str | None = None):
    """``(steps, mean, low, high)``: the repeat-averaged error curve (%) of one (depth, option) from the
    metrics events, with the lowest and highest repeat at each step (the spread band)."""
    by_step = defaultdict(list)
    for e in (e for r in runs for e in r["events"]):
        if e.get("kind") == kind and e.get("error") is not None and split in (None, e.get("split")):
            by_step[int(e["step"])].append(float(e["error"]))
    steps = sorted(by_step)
    return (np.array(steps), *(np.array([100 * stat(by_step[s]) for s in steps]) for stat in (np.mean, min, max)))


def figure_training_curves(records, path) -> str:
    """The paper's Figure 6: training error (dashed) and test error (solid) vs iterations, one panel per family."""
    groups = _groups(records)
    depths = sorted({d for d, _ in groups})
    panels = []
    for option in family_order([o for _, o in groups]):
        nets = [(net_label(depth, option), DEPTH_COLORS[i % len(DEPTH_COLORS)],
                 _mean_curve(groups[(depth, option)], "train"), _mean_curve(groups[(depth, option)], "eval", "test"))
                for i, depth in enumerate(depths) if (depth, option) in groups]
        panels.append(("plain" if option == "none" else f"residual, option {option}", nets))
    return plots.training_curves(panels, path)


def _curves(records, get) -> list[tuple[dict, np.ndarray]]:
    """``(style, values)`` of each (depth, option) whose runs have a per-layer list ``get(run)`` of
    ``(name, value)``: one row of ``values`` per repeat (of the first one's length); the figures draw the mean
    and the spread."""
    groups = _groups(records)
    depths = sorted({d for d, _ in groups})
    curves = []
    for (depth, option), runs in groups.items():
        if lists := [l for l in map(get, runs) if l]:
            values = np.array([[float(v) for _, v in l] for l in lists if len(l) == len(lists[0])])
            style = dict(color=FAMILY_COLORS.get(family(option), "tab:purple"),
                         linestyle=DEPTH_STYLES[depths.index(depth) % len(DEPTH_STYLES)],
                         label=net_label(depth, option))
            curves.append((style, values))
    return curves


def figure_layer_responses(records, path) -> str | None:
    """The paper's Figure 7: std of each 3x3 layer's BN output, in layer order (top) and sorted (bottom)."""
    curves = _curves(records, lambda r: _analysis(r).get("layer_responses"))
    return plots.layer_responses(curves, path) if curves else None


def _grad_steps(records) -> list[str]:
    """The steps at which gradients (weight norms or the back-propagated signal) were measured."""
    return sorted({s for r in records for key in ("grad_norms", "signal") for s in _analysis(r).get(key) or {}},
                  key=int)


def figure_per_block(records, key: str, ylabel: str, path) -> str | None:
    """One panel per measured step (0 = initialisation) of the per-block curves under ``analysis[key]``: the
    back-propagated signal ||dL/dx|| (``"signal"``) or the weight-gradient norm (``"grad_norms"``)."""
    panels = [(_step_title(step), _curves(records, lambda r: (_analysis(r).get(key) or {}).get(step)))
              for step in _grad_steps(records)]
    return plots.gradient_flow(panels, path, ylabel) if any(curves for _, curves in panels) else None


def _step_title(step: str) -> str:
    return "at initialisation" if int(step) == 0 else f"after {int(step)} iterations"


def first_layer_norms(records) -> dict[str, dict[tuple[int, str], float]]:
    """step -> (depth, option) -> the first layer's (stem's) gradient norm, averaged over repeats."""
    groups, out = _groups(records), {}
    for step in _grad_steps(records):
        vals = {k: [float(g[step][0][1]) for r in runs if (g := _analysis(r).get("grad_norms") or {}).get(step)]
                for k, runs in groups.items()}
        out[step] = {k: float(np.mean(v)) for k, v in vals.items() if v}
    return out


def figure_first_layer(records, path) -> str:
    """The first layer's gradient norm against depth, one line per family, one panel per measured step."""
    panels = []
    for step, per in first_layer_norms(records).items():
        lines = []
        for option in family_order([o for _, o in per]):
            pts = sorted((d, v) for (d, o), v in per.items() if o == option)
            lines.append(("plain" if option == "none" else f"residual {option}",
                          FAMILY_COLORS.get(family(option), "tab:purple"), [d for d, _ in pts], [v for _, v in pts]))
        panels.append((_step_title(step), lines))
    return plots.first_layer_gradient(panels, path)


def figure_path_ratios(records, path) -> str | None:
    """||F(x)|| / ||shortcut(x)|| per residual block at the final checkpoint (plain blocks have no ratio)."""
    curves = _curves(records, lambda r: [(p.get("block"), p.get("ratio")) for p in _analysis(r).get("path_stats") or []
                                         if p.get("ratio") is not None and math.isfinite(p["ratio"])])
    return plots.path_ratios(curves, path) if curves else None


def landscape_table(landscape: dict) -> tuple[list[str], list[list[str]]]:
    """One row per network: the loss at the weights and the flatness figures (``landscape.flatness``) as
    mean ± std over repeats x direction seeds, with how many landscapes each row averages."""
    metrics = (("loss0", "loss at the weights"), ("rise_at_r", "loss rise at r"),
               ("mean_rise_within_r", "mean rise within r"), ("max_rise", "max rise on the grid"))
    rows = []
    for n in landscape["nets"]:
        per = [p["flatness"].get("2d") or {} for p in n.get("per", [])]
        radius = next((f["radius"] for f in per if "radius" in f), None)
        rows.append([n["label"], *(_fmt_mean([f.get(m) for f in per], scale=1.0, digits=4) for m, _ in metrics),
                     f"{radius:g}" if radius is not None else "", str(len(per))])
    return ["network", *(label for _, label in metrics), "r", "landscapes"], rows


# --------------------------------------------------------------------------------------------- rendering

class Doc:
    """A report as a list of Markdown blocks, images as ``(file, caption)`` until written; the HTML page is the
    same Markdown rendered by the ``markdown`` package, with the figures embedded."""

    def __init__(self, title: str):
        self.title, self.blocks = title, []

    def h(self, text):
        self.blocks.append("## " + text)

    def p(self, *texts):
        self.blocks += texts

    def table(self, head, rows):
        self.blocks.append(format_table([_cell(c) for c in head], [[_cell(c) for c in row] for row in rows],
                                        markdown=True))

    def image(self, file, caption):
        self.blocks.append((file, caption))

    def markdown(self, image_src=lambda file: file) -> str:
        """The report in Markdown; ``image_src(file)`` is where an image's link points."""
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            if isinstance(b, tuple):
                out += [f"![{b[1]}]({image_src(b[0])})", "", f"*{b[1]}*", ""]
            else:
                out += [b, ""]
        return "\n".join(out)

    def html(self, folder: str) -> str:
        """A self-contained HTML page: the Markdown rendered, each figure inline as a data URI."""
        body = markdown.markdown(self.markdown(lambda file: _data_uri(os.path.join(folder, file))),
                                 extensions=["tables"])
        return _HTML.format(title=html.escape(self.title), style=_STYLE, body=body)


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
          "line-height:1.45;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
          "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
          "td:nth-child(2){text-align:left}img{max-width:100%}"
          "code{background:#f5f5f5;padding:0 3px}pre{background:#f7f7f7;padding:0.6em;overflow-x:auto;font-size:0.8em}")
_HTML = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title><style>{style}</style></head>"
         "<body>\n{body}\n</body></html>\n")


def _cell(value) -> str:
    """A table cell's Markdown: a ``|`` inside it is escaped, so it does not end the cell."""
    return str(value).replace("|", "\\|")


def _data_uri(path: str) -> str:
    with open(path, "rb") as fh:
        return "data:image/png;base64," + base64.b64encode(fh.read()).decode("ascii")


def _generic_table(dicts: list[dict]):
    """Every key of ``dicts`` a column (in first-seen order), floats to 4 significant digits."""
    keys = list(dict.fromkeys(k for d in dicts for k in d))

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else "" if v is None else str(v)
    return keys, [[fmt(d.get(k)) for k in keys] for d in dicts]


# --------------------------------------------------------------------------------------------- writing

def write_results(out_dir, records) -> tuple[str, str]:
    """``results.csv`` (one row per run) and ``results.json`` (runs + the per-(depth, option) summary)."""
    rows = results_rows(records)
    csv_path, json_path = os.path.join(out_dir, "results.csv"), os.path.join(out_dir, "results.json")
    with atomic_write(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["run"])
        w.writeheader()
        w.writerows(rows)
    payload = {"runs": rows, "summary": summary_rows(records), "paired": paired_rows(records),
               "first_layer_grad_norm": {step: [{"depth": d, "option": o, "norm": v} for (d, o), v in per.items()]
                                         for step, per in first_layer_norms(records).items()}}
    write_json(json_path, payload, indent=1)
    return csv_path, json_path


def write_report(out_dir, records, *, title="Shortcut study", settings: dict | None = None,
                 landscape: dict | None = None, shapes_md: str | None = None, notes=()) -> dict:
    """Write figures, ``results.csv/json``, ``report.md`` and ``report.html`` into ``out_dir``.

    Returns ``{"md": path, "html": path, "figures": [paths...]}``.
    """
    if not records:
        raise ValueError("no finished runs to report on")
    fig_dir = os.path.join(out_dir, "figures")
    csv_path, json_path = write_results(out_dir, records)
    doc = Doc(title)
    figures = []

    def figure(fn, name, *args):
        if path := fn(*args, os.path.join(fig_dir, name)):
            figures.append(path)
        return f"figures/{name}" if path else None

    if settings:
        doc.p(" · ".join(f"{k}: `{v}`" for k, v in settings.items()))
    doc.p(*notes)

    doc.h("Results")
    doc.table(*results_table(records))
    one_run = max(len(v) for v in _groups(records).values()) == 1
    doc.p(f"Errors are percentages at the end of training (training error: the mean of the logged training batches "
          f"of the last {TAIL_FRACTION:.0%} of the iterations, where one logging interval alone is a few hundred "
          "images). " + ("One run per cell." if one_run else "With several repeats each cell is mean ± std; the test "
                         "error reads best (mean±std), as in the paper.")
          + " Raw numbers: [results.csv](results.csv), [results.json](results.json); every run folder holds "
            "its `config.json`, `metrics.jsonl`/`metrics.csv` and `final.json`.")

    if claims := claims_text(records):
        doc.h("The paper's claims in this run")
        doc.p(*claims)
        doc.p("Judged from this run's numbers alone" + (" (one run per network: a single seed can go either way "
              "where differences are small)." if one_run else "; the paired intervals below say which differences "
              "the repeats resolve."))

    doc.p("Networks: " + "; ".join(f"{'plain' if o == 'none' else o}: {describe_option(o)}"
                                   for o in family_order(r["option"] for r in records)) + ".")

    if paired := paired_rows(records):
        doc.h("Paired differences between twins")
        doc.p("Twins share the seed (initial weights and batches), so each repeat gives one paired difference. "
              "Rows: the first network's error minus the second's, in percentage points, mean over repeats "
              "and its 95% t-interval; an interval that excludes 0 is a difference these repeats resolve.")
        doc.table(["depth", "A - B", "pairs", "train error (pp)", "test error (pp)"],
                  [[str(r["depth"]), f"{net_label(r['depth'], r['a'])} - {net_label(r['depth'], r['b'])}",
                    str(r["n"]), _interval_text(r["train_error"]), _interval_text(r["test_error"])] for r in paired])

    doc.h("Training curves (Figure 6)")
    doc.p(*degradation_text(records))
    rel = figure(figure_training_curves, "training_curves.png", records)
    doc.image(rel, "Training error (dashed) and test error (solid) against iterations; colour = depth")

    if rel := figure(figure_layer_responses, "layer_responses.png", records):
        doc.h("Layer responses (Figure 7)")
        doc.p("Std of each 3x3 layer's output after its BN (before the addition and the ReLU), on a fixed batch "
              "of training images, final checkpoints (the mean over repeats). The paper finds residual functions "
              "respond more weakly than the layers of plain nets (smaller std), and more weakly the deeper the net.")
        doc.image(rel, "Layer responses in layer order (top) and sorted by magnitude (bottom)")

    if _grad_steps(records):
        doc.h("Gradient flow")
        if rel := figure(figure_per_block, "signal_flow.png", records, "signal", "||dL/dx|| at the block's output"):
            doc.p("The back-propagated signal: the norm of the training-loss gradient with respect to the input "
                  "images and to each block's output, on a fixed batch of training images, at initialisation "
                  "(the fresh model with the run's seed) and at saved steps. This is what the vanishing-gradient "
                  "argument is about: how much of the loss's signal reaches each depth.")
            doc.image(rel, "||dL/dx|| at the input (left end) and after each block (log scale); colour = family, "
                           "line style = depth")
        first = first_layer_norms(records)
        if any(first.values()):  # weight-gradient norms were measured, not only the signal
            doc.p("Norm of the training-loss gradient with respect to each block's parameters, same batch and steps. "
                  "Under BN this scales as 1/||W|| (scaling a conv by c leaves the function unchanged and divides "
                  "its gradient by c), so it mixes the signal with how large the weights have grown.")
            rel = figure(figure_per_block, "gradient_flow.png", records, "grad_norms", "weight-gradient norm per block")
            doc.image(rel, "Gradient norm per block (log scale); colour = family, line style = depth")
            rel = figure(figure_first_layer, "first_layer_gradient.png", records)
            doc.image(rel, "The first layer's gradient norm against depth")
            depths = sorted({d for per in first.values() for d, _ in per})
            opts = family_order({o for per in first.values() for _, o in per})
            trows = [[step, "plain" if o == "none" else f"residual {o}"]
                     + [f"{first[step][(d, o)]:.3g}" if (d, o) in first[step] else "" for d in depths]
                     for step in first for o in opts]
            doc.table(["step", "network"] + [f"depth {d}" for d in depths], trows)

    if rel := figure(figure_path_ratios, "path_ratios.png", records):
        doc.h("Residual paths")
        doc.p("‖F(x)‖ / ‖shortcut(x)‖ per residual block at the final checkpoint: below 1, the block mostly "
              "passes its input on and adds a small correction.")
        doc.image(rel, "Ratio of residual-branch to shortcut output norms per block")

    if proj := [(r, p) for r in records for p in _analysis(r).get("projection_stats") or [] if r["repeat"] == 0]:
        doc.h("Projection shortcuts (options B/C)")
        doc.p("Each learned 1x1 projection with its BN folded in, compared with the map option A would apply "
              "(identity on the old channels, zeros on the new): `identity_energy` is the share of its squared "
              "weights on option A's entries, `identity_distance` its relative distance to that map (0: it "
              "learned option A), `sv_max`/`sv_min` its extreme singular values.")
        doc.table(*_generic_table([{"run": r["name"], **p} for r, p in proj]))

    if landscape and landscape.get("nets"):
        doc.h("Loss landscape")
        if landscape.get("note"):
            doc.p(landscape["note"])
        doc.table(*landscape_table(landscape))
        nets = [(n["label"], n["result"]) for n in landscape["nets"]]
        rel = figure(plots.landscape_contours, "landscape.png", nets)
        doc.image(rel, "Loss contours around the final weights, deepest plain vs residual net")

    if shapes_md:
        doc.h("Layer shapes of the studied models")
        doc.p(shapes_md.rstrip())

    doc.h("Runs")
    doc.table(["run", "config", "metrics", "final"],
              [[r["name"], f"[config.json]({r['dir']}/config.json)", f"[metrics.jsonl]({r['dir']}/metrics.jsonl)",
                f"[final.json]({r['dir']}/final.json)"] for r in sorted(records, key=lambda r: r["name"])])

    md_path, html_path = os.path.join(out_dir, "report.md"), os.path.join(out_dir, "report.html")
    write_text(md_path, doc.markdown())
    write_text(html_path, doc.html(out_dir))
    return {"md": md_path, "html": html_path, "figures": figures, "csv": csv_path, "json": json_path}
