"""report.md: what an experiment ran, the claims its results decide, its figures, its
final metrics, what was observed, and how to rerun it.

GitHub renders the file as is: figures are inline PNG links (with a link to the PDF),
tables are Markdown pipe tables, the grid is a JSON code block.

Observations: an experiment module may define ``observations(df) -> list[str]``: sentences
computed from its results table (the same ``df`` its ``figures`` get), rendered in its
section under "Observed (computed from these results)". Docstrings keep only the
question and the expectation; numbers in the report come from the results, so they
cannot drift from what the code produced. The helpers below (`num`, `listing`,
`compare`, `bits_to_reach`) keep those sentences short and uniform; the numbers come
from `coco_jax.tables` (`final_means`, `reach_means`, `with_gap`, ...). A sentence that
compares two methods says "below"/"above" only when their paired difference's 95%
interval excludes 0 (`tables.compare_runs`, `Difference.sentence`), otherwise
"indistinguishable" with the interval.

Claims: a module may define ``claims(df) -> list[Claim]``: each `Claim` states what the
paper or the module's "Expected" says, where it comes from, and a verdict (holds,
contradicted, inconclusive, holds by construction) decided from the numbers it prints
beside it. Build them with the verdict helpers (`claim_all`, `claim_threshold`,
`claim_by_construction`), which compute the verdict from paired intervals, so that it
always follows from the evidence shown. report.md lists every claim of every section in
a "Claims" table at its top.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from coco_jax.config import ExperimentConfig
from coco_jax.fileio import atomic_write_bytes, jsonable
from coco_jax.tables import (
    CONFIG_FIELDS,
    LEVEL,
    PAIR_FIELDS,
    Difference,
    Interval,
    diverged_runs,
    method_label,
    num,
    ordered_labels,
    reach_means,
    run_key,
    value_text,
    with_gap,
)

__all__ = [
    "CLAIMS_HEADING",
    "OBSERVED_HEADING",
    "VERDICTS",
    "Claim",
    "Section",
    "bits_to_reach",
    "claim_all",
    "claim_by_construction",
    "claim_threshold",
    "claims_of",
    "compare",
    "final_table",
    "listing",
    "num",
    "observations_of",
    "tuned_fields",
    "write_report",
]

OBSERVED_HEADING = "Observed (computed from these results)"
CLAIMS_HEADING = "Claims"
VERDICTS = ("holds", "contradicted", "inconclusive", "holds by construction")

MAX_TABLE_ROWS = 80
# Fields a method preset sets: they are part of the method label, not separate columns.
_METHOD_FIELDS = ("allocation", "compressor", "error_feedback", "decoder", "straggler", "diana_alpha")
# Fields that never label a row of the table (identity, bookkeeping or derived).
_SKIP_FIELDS = (*PAIR_FIELDS, "config_id", "steps", "eval_every")  # a seed draws its data too (Grid seeds=)


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
    claims: Any = None  # the module's claims(df) -> list[Claim], if it defines one
    body: bool = True  # False: only its claims appear (a composite's own claims over all its parts)


def _fmt(x: float) -> str:
    if not np.isfinite(x):
        return "–"
    a = abs(x)
    if a != 0 and (a < 1e-2 or a >= 1e5):
        return f"{x:.2e}"
    return f"{x:.3g}"


# ------------------------------------------------------------------ observations


def listing(values: dict, fmt=None, limit: int = 12) -> str:
    """'a (1.2e-03), b (3.4e-03), ...' in the dict's order (at most `limit` items)."""
    fmt = fmt or num
    items = [f"{k} ({fmt(v)})" for k, v in list(values.items())[:limit]]
    more = len(values) - limit
    return ", ".join(items) + (f" and {more} more" if more > 0 else "")


def compare(a: float, b: float) -> str:
    """ "below" / "above" / "equal to" (a against b, 1% relative tolerance): two numbers
    only, blind to the spread over seeds. A sentence about results compares methods
    with `tables.compare_runs` (paired by seed, with its 95% interval) instead."""
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


# ------------------------------------------------------------------------ claims


@dataclasses.dataclass(frozen=True)
class Claim:
    """One claim a report checks against its results.

    Attributes:
        statement: what is claimed, e.g. "COCO-EF ends below gc-compressed at every k/d".
        source: where it comes from: "paper (arXiv 2603.16353)", "compression: Expected".
        verdict: "holds", "contradicted", "inconclusive" or "holds by construction".
        evidence: the numbers and intervals that decide it, one line each (the
            verdict helpers write the `Difference` texts here).
        differences: the paired differences behind it (kept for tests and tables).
    """

    statement: str
    source: str
    verdict: str
    evidence: tuple[str, ...] = ()
    differences: tuple[Difference, ...] = ()

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(
                f"Claim verdict={self.verdict!r} is invalid: must be one of {', '.join(VERDICTS)}"
            )
        if isinstance(self.evidence, str):
            object.__setattr__(self, "evidence", (self.evidence,))


def claim_all(
    statement: str, source: str, differences: list[Difference], expect: str = "below", minimum: int = 1
) -> Claim:
    """ "a is `expect` b at every setting" from paired differences a − b (one per
    setting, `tables.compare_runs`): **holds** if every difference is on the expected
    side (its interval excludes 0 there) and at least `minimum` of them are replicated
    intervals, **contradicted** if a replicated interval excludes 0 on the other side,
    otherwise **inconclusive** (some interval contains 0, or too few settings have a
    replicated interval). A degenerate interval (`tables.Interval.degenerate`: every
    seed pair gives the same difference, e.g. deterministic runs on one data draw) is
    one observation: on the wrong side it keeps a claim from holding, but it neither
    contradicts a claim nor counts towards `minimum`. The evidence lists every
    difference."""
    if expect not in ("below", "above"):
        raise ValueError(f"expect={expect!r} is invalid: must be 'below' or 'above'")
    other = "above" if expect == "below" else "below"
    replicated = [d for d in differences if d.interval.n >= 2 and not d.interval.degenerate]
    if any(d.verdict == other for d in replicated):
        verdict = "contradicted"
    elif len(replicated) >= max(minimum, 1) and all(d.verdict == expect for d in differences):
        verdict = "holds"
    else:
        verdict = "inconclusive"
    return Claim(statement, source, verdict, tuple(d.text() for d in differences), tuple(differences))


def claim_threshold(
    statement: str,
    source: str,
    intervals: Mapping[str, Interval],
    *,
    below: float | None = None,
    above: float | None = None,
) -> Claim:
    """ "the quantity is below (or above) a threshold at every setting" from t-intervals
    (`tables.t_interval` over seeds) keyed by setting: **holds** if every interval lies
    entirely on the claimed side (at least one of them replicated), **contradicted** if
    a replicated interval lies entirely on the other side, otherwise **inconclusive**.
    A degenerate interval (every seed gave the same value) is one observation, as in
    `claim_all`: on the wrong side it keeps the claim from holding, nothing more."""
    if (below is None) == (above is None):
        raise ValueError("give exactly one of below= or above=")
    limit = below if below is not None else above
    lines, sides = [], []
    for where, iv in intervals.items():
        if iv.n < 2:
            side = "unknown"
        elif below is not None:
            side = "yes" if iv.high < limit else "no" if iv.low > limit else "unknown"
        else:
            side = "yes" if iv.low > limit else "no" if iv.high < limit else "unknown"
        if iv.degenerate and side != "unknown":
            side = "one " + side  # not replicated: it cannot decide the claim alone
        sides.append(side)
        bound = (
            "no interval"
            if iv.n < 2
            else "no spread: one observation"
            if iv.degenerate
            else f"[{num(iv.low)}, {num(iv.high)}]"
        )
        lines.append(
            f"{where}: {num(iv.mean)} {bound} ({round(iv.level * 100)}% CI, {iv.n} seeds) vs "
            f"{'<' if below is not None else '>'} {num(limit)}"
        )
    if "no" in sides:
        verdict = "contradicted"
    elif "yes" in sides and all(x in ("yes", "one yes") for x in sides):
        verdict = "holds"
    else:
        verdict = "inconclusive"
    return Claim(statement, source, verdict, tuple(lines))


def claim_by_construction(statement: str, source: str, why: str) -> Claim:
    """A claim the method guarantees whatever the results (a check that cannot fail is
    labelled so, never presented as a finding); `why` says what guarantees it."""
    return Claim(statement, source, "holds by construction", (why,))


def claims_of(section: Section) -> tuple[list[Claim], str | None]:
    """(the section's claims, an error message if its ``claims(df)`` failed): a failing
    module does not stop the report."""
    fn = section.claims
    if fn is None:
        return [], None
    try:
        out = list(fn(section.df) or [])
    except Exception as err:  # noqa: BLE001 - a report must not die on one module
        return [], f"claims could not be computed: {type(err).__name__}: {err}"
    bad = [c for c in out if not isinstance(c, Claim)]
    if bad:
        return [], f"claims() returned {type(bad[0]).__name__}, not coco_jax.report.Claim"
    return out, None


def _claims_block(sections: list[Section], composite: bool) -> list[str]:
    """The "Claims" table: every claim of every section, its verdict and evidence."""
    rows, errors = [], []
    for s in sections:
        claims, err = claims_of(s)
        if err:
            errors.append(f"_({s.name}: {err})_")
        rows += [(s.name, c) for c in claims]
    if not rows and not errors:
        return []
    counts = {v: sum(c.verdict == v for _, c in rows) for v in VERDICTS}
    lines = [
        f"## {CLAIMS_HEADING}",
        "",
        (
            "Each verdict is computed from the numbers beside it: paired differences over seeds (same seed and data "
            f"seed) with their {round(LEVEL * 100)}% Student-t intervals. A claim holds when every interval "
            "excludes 0 on the claimed side, is contradicted when one excludes 0 on the other side, and is "
            "inconclusive otherwise. Where every seed pair gives the same number (no spread: deterministic runs on "
            "one data draw) that is one observation, not an interval: it cannot decide a claim alone. "
            + ", ".join(f"{n} {v}" for v, n in counts.items() if n)
            + "."
        ),
        "",
    ]
    if rows:
        head = ["#", *(["Section"] if composite else []), "Claim", "Source", "Verdict", "Evidence"]
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for i, (name, c) in enumerate(rows, 1):
            cells = [str(i), *([name] if composite else []), c.statement, c.source, f"**{c.verdict}**"]
            cells.append("<br>".join(c.evidence) or "–")
            lines.append("| " + " | ".join(x.replace("|", "\\|").replace("\n", " ") for x in cells) + " |")
        lines.append("")
    return lines + [*errors, ""]


def _varying(df: pd.DataFrame, always: tuple[str, ...] = ()) -> list[str]:
    """Config fields that vary between runs of one method (the grid's axes, seeds aside);
    fields that only change with the method (a preset's redundancy, say) are not axes.
    Fields in `always` (tuned fields: the chosen values) are listed whatever they do."""
    out = []
    for c in CONFIG_FIELDS:
        if c not in df or c in _SKIP_FIELDS:
            continue
        if c in always or (
            c not in _METHOD_FIELDS and (df.groupby("Method", sort=False)[c].nunique(dropna=False) > 1).any()
        ):
            out.append(c)
    return out


def tuned_fields(grids: dict) -> tuple[str, ...]:
    """The tuned fields of grid descriptions (`Grid.describe()`), in order."""
    names = [n for g in grids.values() for n in ((g or {}).get("tuning") or {}).get("fields", {})]
    return tuple(dict.fromkeys(names))


def final_table(
    df: pd.DataFrame, extra: tuple[str, ...] = (), always: tuple[str, ...] = ()
) -> tuple[pd.DataFrame, str]:
    """Final metrics per method (and per varied grid axis, seeds pooled): mean ± the
    half-width of its 95% Student-t interval over seeds of the last evaluated step
    (`tables.value_text`: a gap at the float floor is said so, never "± 0"); each
    history key in `extra` (an experiment's REPORT_METRICS) as its mean over the last
    half of the evaluated steps. Runs that diverged (`tables.diverged_runs`, the rule of
    figures and sentences too) are left out of every number and counted in "Runs".
    Fields in `always` (a tuned grid's tuned fields) are columns even where constant,
    so every row shows its chosen value. Returns (table of strings, a note)."""
    if df.empty:
        return pd.DataFrame(), "no rows"
    note = []
    frames = []
    for part, pdf in df.groupby("part", sort=False) if "part" in df else [(None, df)]:
        last, keys, loss_col, dropped, bad = _last_rows(pdf, extra, always)
        if dropped:
            note.append(
                f"{part or 'table'}: pooled over {', '.join(dropped)} (too many rows; the ± then includes that axis)"
            )
        label_part = part if part is not None and df["part"].nunique() > 1 else None
        rows = [
            _final_row(g, key if isinstance(key, tuple) else (key,), keys, loss_col, extra, label_part, bad)
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


def _last_rows(pdf: pd.DataFrame, extra: tuple[str, ...], always: tuple[str, ...] = ()):
    """(last evaluated row of each run with its method label and last-half means, the
    varied axes that label the table's rows, the loss column, the axes pooled because
    the table would be too long, the diverged runs)."""
    pdf, loss_col = with_gap(pdf)
    pdf = pdf.copy()
    pdf["_run"] = run_key(pdf)
    bad = diverged_runs(pdf, loss_col)
    ordered = pdf.sort_values("step")
    last = ordered.groupby("_run", sort=False).tail(1).copy()
    for key in extra:
        if key in ordered:
            half = ordered.groupby("_run", sort=False)[key].apply(_last_half_mean)
            last[f"_extra_{key}"] = last["_run"].map(half)
    last["Method"] = last.apply(method_label, axis=1)
    keys = _varying(last, always)
    dropped = []
    while keys and last.groupby(["Method", *keys], dropna=False).ngroups > MAX_TABLE_ROWS:
        pool = [k for k in keys if k not in always] or keys
        keys.remove(pool[-1])
        dropped.insert(0, pool[-1])
    rank = {m: i for i, m in enumerate(ordered_labels(list(dict.fromkeys(last["Method"]))))}
    last = last.assign(_rank=last["Method"].map(rank)).sort_values(["_rank", *keys], kind="stable")
    return last, keys, loss_col, dropped, bad


def _last_half_mean(values: pd.Series) -> float:
    tail = values.to_numpy(np.float64)[len(values) // 2 :]
    return float(np.nanmean(tail)) if np.isfinite(tail).any() else float("nan")


def _final_row(g: pd.DataFrame, key: tuple, keys: list, loss_col: str, extra: tuple, part, bad: set) -> dict:
    """One row of the final-metrics table: a method (and varied axes) over its seeds;
    runs in `bad` (diverged) are counted, not averaged."""
    div = g["_run"].isin(bad).to_numpy()
    ok = g[~div]
    row: dict[str, Any] = {} if part is None else {"Part": part}
    row["Method"] = key[0]
    for k, v in zip(keys, key[1:]):
        row[k] = "–" if v is None or (isinstance(v, float) and math.isnan(v)) else v
    label = "Final F − F*" if loss_col == "gap" else "Final loss"
    floor = ok["gap_floor"].to_numpy(np.float64) if loss_col == "gap" and "gap_floor" in ok else None
    row[label] = value_text(ok[loss_col].to_numpy(np.float64), floor)
    if "test_accuracy" in ok and ok["test_accuracy"].notna().any():
        row["Test acc. (%)"] = value_text(100 * ok["test_accuracy"].to_numpy(np.float64))
    row["Uploaded Mbit"] = value_text(ok["bits"].to_numpy(np.float64) / 1e6)
    if "time" in ok:
        row["Sim. time"] = value_text(ok["time"].to_numpy(np.float64))
    for key_name in extra:
        if f"_extra_{key_name}" in ok:
            row[f"{key_name} (last half)"] = value_text(ok[f"_extra_{key_name}"].to_numpy(np.float64))
    row["Runs"] = f"{len(g)}" + (f" ({int(div.sum())} diverged, left out)" if div.any() else "")
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
    lines += _claims_block(sections, composite)
    if composite:
        lines += ["## Contents", ""]
        lines += [f"- [{s.name}](#{s.name.lower()}): {s.description}" for s in sections if s.body]
        lines.append("")
    for s in sections:
        if s.body:
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
            f"- Curves: mean over seeds, shaded band: the {round(LEVEL * 100)}% confidence interval of the mean "
            "(Student t; stated in each legend). Tables: mean ± the half-width of that interval; diverged runs "
            "(non-finite, or a final loss above 10× the initial) are left out of curves, tables and sentences "
            "alike and counted. Convex tasks plot the optimality gap F(θ) − F*, F* computed in float64 from the "
            'data; a gap at the float32 resolution is reported as "at the float floor".'
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
    table, note = final_table(s.df, tuple(s.metrics), always=tuned_fields(s.grids))
    lines += [
        f"{sub} Final metrics (mean ± {round(LEVEL * 100)}% CI half-width over seeds, last evaluated step)",
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
        lines += [head, "", f"- base: `{json.dumps(base, default=str)}`"]
        tn = g.get("tuning")
        if tn:
            cands = "; ".join(f"{k} ∈ {{{_values(v)}}}" for k, v in tn.get("fields", {}).items())
            lines.append(
                f"- tuned per cell on tuning seeds {_values(tn.get('tuning_seeds', []))} (disjoint from the "
                f"reported seeds): {cands}; criterion {tn.get('criterion', {}).get('name')}: "
                f"{tn.get('criterion', {}).get('definition')}"
                + (f"; edges extended up to {tn['extend_edges']} round(s)" if tn.get("extend_edges") else "")
                + " (choices: tuning.parquet of the part's directory)"
            )
        lines.append("")
        rows = [(k, _values(v), "product") for k, v in (g.get("axes") or {}).items()]
        for i, block in enumerate(g.get("zip") or []):
            rows += [(k, _values(v), f"zip {i}") for k, v in block.items()]
        if rows:
            lines += ["| axis | values | combined by |", "|---|---|---|"]
            lines += [f"| {k} | {v} | {how} |" for k, v, how in rows]
            lines.append("")
    return lines
