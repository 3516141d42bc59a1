"""report.md: what an experiment ran, its figures, its final metrics, what was observed,
and how to rerun it.

GitHub renders the file as is: figures are inline PNG links (with a link to the PDF),
tables are Markdown pipe tables, the grid is a JSON code block.

Observations: an experiment module may define ``observations(df) -> list[str]``: sentences
computed from its results table (the same ``df`` its ``figures`` get), rendered in its
section under "Observed (computed from these results)". Docstrings keep only the
question and the expectation; numbers in the report come from the results, so they
cannot drift from what the code produced. The helpers below (`num`, `listing`,
`compare`, `bits_to_reach`) keep those sentences short and uniform; the numbers come
from `coco_jax.tables` (`final_means`, `reach_means`, `with_gap`, ...).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any

import numpy as np
import pandas as pd

from coco_jax.config import ExperimentConfig
from coco_jax.fileio import atomic_write_bytes, jsonable
from coco_jax.tables import CONFIG_FIELDS, method_label, ordered_labels, reach_means, run_key, with_gap

__all__ = [
    "OBSERVED_HEADING",
    "Section",
    "bits_to_reach",
    "compare",
    "final_table",
    "listing",
    "num",
    "observations_of",
    "write_report",
]

OBSERVED_HEADING = "Observed (computed from these results)"

MAX_TABLE_ROWS = 80
# Fields a method preset sets: they are part of the method label, not separate columns.
_METHOD_FIELDS = ("allocation", "compressor", "error_feedback", "decoder", "straggler", "diana_alpha")
# Fields that never label a row of the table (identity, bookkeeping or derived).
_SKIP_FIELDS = ("seed", "config_id", "steps", "eval_every")


@dataclasses.dataclass
class Section:
    """One experiment's part of a report."""

    name: str
    description: str
    doc: str
    figures: dict  # figure name -> [png path, pdf path]
    df: Any  # its results table (with `part`)
    grids: dict = dataclasses.field(default_factory=dict)  # part -> Grid.describe()
    metrics: tuple = ()  # extra history keys for the final-metrics table (REPORT_METRICS)
    observe: Any = None  # the module's observations(df) -> list[str], if it defines one


def _fmt(x: float) -> str:
    if not np.isfinite(x):
        return "–"
    a = abs(x)
    if a != 0 and (a < 1e-2 or a >= 1e5):
        return f"{x:.2e}"
    return f"{x:.3g}"


def _mean_std(values: np.ndarray) -> str:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return "–"
    if v.size == 1:
        return _fmt(float(v[0]))
    return f"{_fmt(float(v.mean()))} ± {_fmt(float(v.std(ddof=1)))}"


# ------------------------------------------------------------------ observations


def num(x: float, digits: int = 2) -> str:
    """A number for a sentence: 2 significant digits, scientific below 0.01 or from
    1e5 (``num(0.00172) == "1.7e-03"``), "n/a" when not finite."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(x):
        return "n/a"
    a = abs(x)
    if a != 0 and (a < 1e-2 or a >= 1e5):
        return f"{x:.{max(digits - 1, 0)}e}"
    if a >= 10**digits:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def listing(values: dict, fmt=None, limit: int = 12) -> str:
    """'a (1.2e-03), b (3.4e-03), ...' in the dict's order (at most `limit` items)."""
    fmt = fmt or num
    items = [f"{k} ({fmt(v)})" for k, v in list(values.items())[:limit]]
    more = len(values) - limit
    return ", ".join(items) + (f" and {more} more" if more > 0 else "")


def compare(a: float, b: float) -> str:
    """ "below" / "above" / "equal to" (a against b, 1% relative tolerance)."""
    if not (np.isfinite(a) and np.isfinite(b)):
        return "not comparable with"
    if abs(a - b) <= 0.01 * max(abs(a), abs(b)):
        return "equal to"
    return "below" if a < b else "above"


def bits_to_reach(df: pd.DataFrame, y: str, target: float, a: str = "coco-ef", b: str = "gc"):
    """Mean uploaded bits of methods `a` and `b` to first reach `y` <= `target`, with the
    ratio said in words ("3.1× fewer bits", or "more"); None unless both reach it."""
    hits = reach_means(df, y, target, x="bits").set_index("method")["final"]
    bits_a, bits_b = hits.get(a, np.nan), hits.get(b, np.nan)
    if not (np.isfinite(bits_a) and np.isfinite(bits_b) and bits_a > 0):
        return None
    ratio = (
        f"{num(bits_b / bits_a)}× fewer bits" if bits_b >= bits_a else f"{num(bits_a / bits_b)}× more bits"
    )
    return bits_a, bits_b, ratio


def observations_of(section: Section) -> list[str]:
    """The computed sentences of a section: its `observe` function (the experiment
    module's ``observations(df)``, set by `coco_jax.experiment`); [] without one. An
    observation that fails to compute is reported as such, not raised: the report is
    still written."""
    fn = section.observe
    if fn is None:
        return []
    try:
        out = fn(section.df)
    except Exception as err:  # noqa: BLE001 - a report must not die on one sentence
        return [f"_(observations could not be computed: {type(err).__name__}: {err})_"]
    return [str(x) for x in (out or [])]


def _varying(df: pd.DataFrame) -> list[str]:
    """Config fields that vary between runs of one method (the grid's axes, seeds aside);
    fields that only change with the method (a preset's redundancy, say) are not axes."""
    out = []
    for c in CONFIG_FIELDS:
        if c not in df or c in _METHOD_FIELDS or c in _SKIP_FIELDS:
            continue
        if (df.groupby("Method", sort=False)[c].nunique(dropna=False) > 1).any():
            out.append(c)
    return out


def final_table(df: pd.DataFrame, extra: tuple[str, ...] = ()) -> tuple[pd.DataFrame, str]:
    """Final metrics per method (and per varied grid axis, seeds pooled): mean ± std over
    seeds of the last evaluated step; each history key in `extra` (an experiment's
    REPORT_METRICS) as its mean over the last half of the evaluated steps. Returns
    (table of strings, a note)."""
    if df.empty:
        return pd.DataFrame(), "no rows"
    note = []
    frames = []
    for part, pdf in df.groupby("part", sort=False) if "part" in df else [(None, df)]:
        last, keys, loss_col, dropped = _last_rows(pdf, extra)
        if dropped:
            note.append(
                f"{part or 'table'}: pooled over {', '.join(dropped)} (too many rows; the ± then includes that axis)"
            )
        label_part = part if part is not None and df["part"].nunique() > 1 else None
        rows = [
            _final_row(g, key if isinstance(key, tuple) else (key,), keys, loss_col, extra, label_part)
            for key, g in last.groupby(["Method", *keys], dropna=False, sort=False)
        ]
        frames.append(pd.DataFrame(rows))
    table = pd.concat(frames, ignore_index=True).fillna("")
    metrics = ["Final F − F*", "Final loss", "Test acc. (%)", "Uploaded Mbit", "Sim. time"]
    metrics += [f"{k} (last half)" for k in extra] + ["Runs"]
    first = [c for c in ("Part", "Method") if c in table]
    keys_all = [c for c in table.columns if c not in first and c not in metrics]
    table = table[first + keys_all + [c for c in metrics if c in table]]
    return table, "; ".join(note)


def _last_rows(pdf: pd.DataFrame, extra: tuple[str, ...]):
    """(last evaluated row of each run with its method label and last-half means, the
    varied axes that label the table's rows, the loss column, the axes pooled because
    the table would be too long)."""
    pdf, loss_col = with_gap(pdf)
    pdf = pdf.copy()
    pdf["_run"] = run_key(pdf)
    ordered = pdf.sort_values("step")
    last = ordered.groupby("_run", sort=False).tail(1).copy()
    for key in extra:
        if key in ordered:
            half = ordered.groupby("_run", sort=False)[key].apply(_last_half_mean)
            last[f"_extra_{key}"] = last["_run"].map(half)
    last["Method"] = last.apply(method_label, axis=1)
    keys = _varying(last)
    dropped = []
    while keys and last.groupby(["Method", *keys], dropna=False).ngroups > MAX_TABLE_ROWS:
        dropped.insert(0, keys.pop())
    rank = {m: i for i, m in enumerate(ordered_labels(list(dict.fromkeys(last["Method"]))))}
    last = last.assign(_rank=last["Method"].map(rank)).sort_values(["_rank", *keys], kind="stable")
    return last, keys, loss_col, dropped


def _last_half_mean(values: pd.Series) -> float:
    tail = values.to_numpy(np.float64)[len(values) // 2 :]
    return float(np.nanmean(tail)) if np.isfinite(tail).any() else float("nan")


def _final_row(g: pd.DataFrame, key: tuple, keys: list, loss_col: str, extra: tuple, part) -> dict:
    """One row of the final-metrics table: a method (and varied axes) over its seeds."""
    div = g["diverged"].fillna(False).astype(bool) | (g.get("diverged_step", pd.Series(-1, g.index)) >= 0)
    ok = g[~div.to_numpy()]
    row: dict[str, Any] = {} if part is None else {"Part": part}
    row["Method"] = key[0]
    for k, v in zip(keys, key[1:]):
        row[k] = "–" if v is None or (isinstance(v, float) and math.isnan(v)) else v
    label = "Final F − F*" if loss_col == "gap" else "Final loss"
    row[label] = _mean_std(ok[loss_col].to_numpy(np.float64))
    if "test_accuracy" in ok and ok["test_accuracy"].notna().any():
        row["Test acc. (%)"] = _mean_std(100 * ok["test_accuracy"].to_numpy(np.float64))
    row["Uploaded Mbit"] = _mean_std(ok["bits"].to_numpy(np.float64) / 1e6)
    if "time" in ok:
        row["Sim. time"] = _mean_std(ok["time"].to_numpy(np.float64))
    for key_name in extra:
        if f"_extra_{key_name}" in ok:
            row[f"{key_name} (last half)"] = _mean_std(ok[f"_extra_{key_name}"].to_numpy(np.float64))
    row["Runs"] = f"{len(g)}" + (f" ({int(div.sum())} diverged)" if div.any() else "")
    return row


def _markdown_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "_(no rows)_"
    cols = list(table.columns)

    def cell(v):
        if isinstance(v, float):
            return _fmt(v) if not v.is_integer() else f"{v:g}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in table.iterrows():
        lines.append("| " + " | ".join(cell(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def _doc_block(doc: str) -> str:
    return doc.strip() + "\n" if doc else ""


def _figure_block(out: pathlib.Path, figures: dict, prefix: str = "") -> list[str]:
    """Figures as Markdown image links relative to the report's directory."""
    lines = []
    for name, paths in figures.items():
        rel = [pathlib.Path(os.path.relpath(pathlib.Path(p).resolve(), out.resolve())) for p in paths]
        png = next((p for p in rel if p.suffix == ".png"), rel[0])
        pdf = next((p for p in rel if p.suffix == ".pdf"), None)
        lines.append(f"**{prefix}{name}**" + (f" ([PDF]({pdf.as_posix()}))" if pdf else ""))
        lines.append("")
        lines.append(f"![{prefix}{name}]({png.as_posix()})")
        lines.append("")
    return lines


def _wall(meta: dict) -> str:
    w = meta.get("wall_time_s", {})
    parts = []
    for k, label in (
        ("sweep", "sweep"),
        ("figures", "figures"),
        ("total", "total"),
        ("last_redraw_figures", "last redraw"),
    ):
        if k in w:
            parts.append(f"{label} {w[k]:.1f} s")
    return ", ".join(parts) or "unknown"


def write_report(out: pathlib.Path, exp, sections: list[Section], meta: dict) -> pathlib.Path:
    """Write out/report.md (atomically) and return its path."""
    out = pathlib.Path(out)
    composite = bool(getattr(exp, "parts", ()))
    lines = [f"# {exp.name}: {exp.description}", ""]
    if composite:
        lines += [_doc_block(exp.doc), ""]
    lines += _run_block(out, exp, meta)
    if composite:
        lines += ["## Contents", ""]
        lines += [f"- [{s.name}](#{s.name.lower()}): {s.description}" for s in sections]
        lines.append("")
    for s in sections:
        lines += _section_block(out, exp, s, composite)
    lines += _environment_block(meta)
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    path = out / "report.md"
    atomic_write_bytes(path, text.encode())
    return path


def _run_block(out: pathlib.Path, exp, meta: dict) -> list[str]:
    """What ran: the command, overrides, wall time, configurations, compile and run seconds."""
    variant = "quick" if meta.get("quick") else "full"
    cmd = meta.get("command") or f"coco-jax run {exp.path.name}{' --quick' if meta.get('quick') else ''}"
    parts = list(meta.get("parts", {}).values())
    compilations = sum((p.get("compilations") or 0) for p in parts)
    configs = sum((p.get("configs") or 0) for p in parts)
    compile_s = sum((p.get("compile_s") or 0.0) for p in parts)
    run_s = sum((p.get("run_s") or 0.0) for p in parts)
    resumed = (
        " (resumed: finished parts were loaded, not recomputed)"
        if any(p.get("resumed") for p in parts)
        else ""
    )
    lines = [f"- Command: `{cmd}` ({variant} variant); redraw with `coco-jax plot {out.as_posix()}`"]
    if meta.get("overrides"):  # config flags of `coco-jax run experiments/<name>.py`
        given = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in meta["overrides"].items())
        lines.append(f"- Overrides of every grid's base: {given}")
    return lines + [
        f"- Started: {meta.get('started', '?')}; wall time: {_wall(meta)}",
        (
            f"- {configs} configurations, {compilations} compilations in this run: compiling "
            f"{compile_s:.1f} s (in background threads, overlapping the runs), running {run_s:.1f} s{resumed}"
        ),
        (
            "- Curves: mean over seeds, shaded band ±1 standard deviation (stated in each legend). "
            "Convex tasks plot the optimality gap F(θ) − F*, F* computed in float64 from the data."
        ),
        "",
    ]


def _section_block(out: pathlib.Path, exp, s: Section, composite: bool) -> list[str]:
    """One experiment's part: its docstring, observations, figures, final metrics, grid."""
    sub = "###" if composite else "##"  # a section's own headings
    lines = [f"## {s.name}", "", f"_{s.description}_", ""] if composite else []
    lines += [_doc_block(s.doc), ""]
    observed = observations_of(s)
    if observed:
        lines += [f"{sub} {OBSERVED_HEADING}", "", *[f"- {o}" for o in observed], ""]
    lines += [f"{sub} Figures", "", *_figure_block(out, s.figures)]
    table, note = final_table(s.df, tuple(s.metrics))
    lines += [
        f"{sub} Final metrics (mean ± std over seeds, last evaluated step)",
        "",
        _markdown_table(table),
        "",
    ]
    if note:
        lines += [f"_{note}_", ""]
    return lines + [f"{sub} Grid", "", *_grid_block(s.grids)]


def _environment_block(meta: dict) -> list[str]:
    """Versions, devices and the git commit the results came from."""
    lines = ["## Environment", ""]
    versions = meta.get("versions", {})
    if versions:
        lines += ["| package | version |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in versions.items()]
        lines += [f"| python | {meta.get('python', '?')} |", ""]
    dev = meta.get("devices")
    if dev:
        lines.append(
            f"- Devices: {dev.get('local_device_count')} × {dev.get('device_kind')} ({dev.get('platform')}), "
            f"{dev.get('process_count')} process(es)"
        )
    git = meta.get("git")
    if git:
        lines.append(
            f"- Git commit: `{git.get('commit')}`"
            + (" (with uncommitted changes)" if git.get("dirty") else "")
        )
    return [*lines, ""]


def _compact_grids(grids: dict) -> dict:
    """Grid descriptions with the base reduced to the fields that differ from the
    ExperimentConfig defaults (the rest is the default)."""
    defaults = jsonable(ExperimentConfig().to_dict())
    out = {}
    for name, g in grids.items():
        g = dict(g)
        if isinstance(g.get("base"), dict):
            g["base (non-default fields)"] = {k: v for k, v in g.pop("base").items() if defaults.get(k) != v}
        out[name] = g
    return out


def _values(v) -> str:
    text = ", ".join("None" if x is None else str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)
    return text.replace("|", "\\|")


def _grid_block(grids: dict) -> list[str]:
    """Each grid as a line of base fields (those differing from the defaults) and a
    table of its axes and zipped axes."""
    lines = []
    for name, g in _compact_grids(grids).items():
        base = g.get("base (non-default fields)", g.get("base"))
        head = f"**{name}**: {g.get('num_configs', '?')} configurations"
        exc = g.get("exclude")
        if exc:
            exc = (
                exc.replace("callable ", "").replace("grid.<locals>.", "")
                if isinstance(exc, str)
                else json.dumps(exc)
            )
            head += f"; excluded points: `{exc}`"
        lines += [head, "", f"- base: `{json.dumps(base, default=str)}`", ""]
        rows = [(k, _values(v), "product") for k, v in (g.get("axes") or {}).items()]
        for i, block in enumerate(g.get("zip") or []):
            rows += [(k, _values(v), f"zip {i}") for k, v in block.items()]
        if rows:
            lines += ["| axis | values | combined by |", "|---|---|---|"]
            lines += [f"| {k} | {v} | {how} |" for k, v, how in rows]
            lines.append("")
    return lines
