"""What redundancy buys, and what it costs in time.

Paper setting: the COCO-EF paper's synthetic linear regression at its scale (100
devices, d = 200, 40 rows per device; experiments/_settings.py) with COCO-EF (top-k
10%, error feedback, fixed decoder), redundancy s = 0, 1, 3, 4, 9 (every s with
(s+1) | 100, so frc is defined for each). The quick variant uses 16 devices and
s = 0..3.

Question: with COCO-EF, how does the redundancy s (each partition on s+1 devices)
change (a) the optimality gap after a fixed number of iterations with Bernoulli
stragglers, and (b) the simulated wall-clock time to a target gap when compute times
are random (shifted exponential per partition, so a device's time grows with its load
s+1) and the server waits for the M − s fastest devices, for the cyclic and the
fractional repetition (frc) codes?

Expected: (a) more redundancy lowers the gap per iteration: every partition has more
chances to reach the server, the decoded gradient is less noisy. (b) in time the
trade-off of Tandon et al. appears: each device computes s+1 partitions, so an
iteration gets slower with s while waiting for fewer devices helps only a little, and
the time to the target grows beyond small s. frc and cyclic behave alike at equal s.

Command: coco-jax run experiments/redundancy.py --quick   (full, 100 devices: without --quick)
"""

import numpy as np

import coco_jax as cj
from coco_jax import plots, tables
from coco_jax import report as rp
from coco_jax.experiment import helper_module

S = helper_module(__file__)  # experiments/_settings.py

NAME = "redundancy"
DESCRIPTION = "COCO-EF against the redundancy s for cyclic and frc codes, in iterations and in simulated time"
TARGET_GAP = 1e-3


def _redundancies(quick, m):
    return [0, 1, 2, 3] if quick else [0, 1, 3, 4, 9]


def grid(quick: bool = False):
    base = S.linreg(quick)
    m = base.num_devices
    seeds = S.seeds(quick, full=2)
    ss = _redundancies(quick, m)

    def frc_invalid(p):  # frc needs (s + 1) | M
        return p["allocation"] == "frc" and m % (p["redundancy"] + 1) != 0

    iterations = cj.Grid(
        base=base,
        axes={"allocation": ["cyclic", "frc"], "redundancy": ss, "seed": seeds},
        exclude=frc_invalid,
        name="iterations",
    )
    time = cj.Grid(
        base=base.replace(straggler="latency"),
        axes={"allocation": ["cyclic", "frc"], "seed": seeds},
        zip_axes={"redundancy": ss, "wait_for": [m - s for s in ss]},
        exclude=frc_invalid,
        name="time",
    )
    return [iterations, time]


def figures(df):
    df, y = tables.with_gap(df)
    it = df[df.part == "iterations"]
    tm = df[df.part == "time"]
    steps = int(it["steps"].max())
    per_step = tm.assign(step_time=tm["time"] / tm["step"].where(tm["step"] > 0))
    fig = plots.finals_figure(
        [
            {
                "finals": tables.final_values(it, y),
                "x": "redundancy",
                "y": y,
                "hue": "allocation",
                "title": f"after {steps} iterations (Bernoulli p = 0.2)",
            },
            {
                "finals": tables.steps_to_target(tm, y, TARGET_GAP, x="time"),
                "x": "redundancy",
                "y": "time",
                "hue": "allocation",
                "ylabel": f"Simulated time to F − F* ≤ {TARGET_GAP:g} (time units)",
                "title": "time to target (wait for M − s fastest)",
                "over": ("seed", "wait_for"),
                "missing_note": "missing points: target not reached",
                "logy": False,
            },
            {
                "finals": tables.final_values(per_step, "step_time"),
                "x": "redundancy",
                "y": "step_time",
                "hue": "allocation",
                "ylabel": "Mean simulated time per iteration",
                "title": "cost of an iteration",
                "over": ("seed", "wait_for"),
                "logy": False,
            },
        ],
        title=f"Redundancy: cyclic vs fractional repetition code (COCO-EF, {tables.setting_label(df)})",
    )
    return {"vs_s": fig}


def observations(df):
    df, y, what = S.gap_of(df)
    out = []
    it = df[df.part == "iterations"]
    if not it.empty:
        steps = int(it["steps"].max())
        fin = tables.final_means(it, y, by=("allocation", "redundancy"))
        for alloc, g in fin.groupby("allocation"):
            g = g.sort_values("redundancy")
            out.append(
                f"{alloc}: {what} after {steps} iterations (Bernoulli p = 0.2), by s: "
                + rp.listing({f"s = {int(s)}": v for s, v in zip(g.redundancy, g.final)})
                + "."
            )
    tm = df[df.part == "time"]
    if not tm.empty:
        tm = tm.assign(_run=tables.run_key(tm))
        last = tm.sort_values("step").groupby("_run").tail(1)
        per = (last["time"] / last["step"]).groupby([last["allocation"], last["redundancy"]]).mean()
        hits = tables.reach_means(tm, y, TARGET_GAP, x="time", by=("allocation", "redundancy"))
        for alloc in sorted(set(tm["allocation"])):
            p = per.loc[alloc] if alloc in per.index.get_level_values(0) else None
            if p is None:
                continue
            out.append(
                f"{alloc}: mean simulated time per iteration (waiting for the M − s fastest), by s: "
                + rp.listing({f"s = {int(s)}": v for s, v in p.items()})
                + "."
            )
            h = hits[hits.allocation == alloc].sort_values("redundancy")
            reach = {f"s = {int(s)}": v for s, v in zip(h.redundancy, h.final)}
            if reach:
                finite = [(v, k) for k, v in reach.items() if np.isfinite(v)]
                best = min(finite) if finite else None
                missing = any(not np.isfinite(v) for v in reach.values())
                out.append(
                    f"{alloc}: simulated time to {what} ≤ {TARGET_GAP:g}, by s: "
                    + rp.listing(reach)
                    + (f"; fastest at {best[1]}" if best else "")
                    + (" (n/a: not reached in every seed)" if missing else "")
                    + "."
                )
    return out
