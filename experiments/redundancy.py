"""What redundancy buys, and what it costs in time.

Paper setting: the COCO-EF paper's synthetic linear regression at its scale (100
devices, d = 200, 40 rows per device; experiments/_settings.py) with COCO-EF (top-k
10%, error feedback, fixed decoder), redundancy s = 0, 1, 4, 9 (s with (s+1) | 100, so
frc is defined for each; s = 3 is left out for the time budget). Every method runs at
its own tuned step (9 candidates around 1/L̂ on tuning seeds 100-101, edges extended)
per cell, 5 reported seeds (3 quick) on one data draw. The quick variant uses 16
devices and s = 0..3.

Methods: every coded method (coco-ef, coco-ef21, gc, gc-compressed, gc-unbiased,
gc-diana, onebit-gc) in iterations; COCO-EF, coco-ef21 and gc in simulated time. Not
applicable: ef-uncoded, ignore-stragglers and gd have no code (s = 0 by definition:
they are what a coded method is at s = 0; the methods study compares them).

Question: with COCO-EF (and the other coded methods), how does the redundancy s (each partition on s+1 devices)
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

from coco_jax import plots, tables
from coco_jax import report as rp
from coco_jax.experiment import helper_module

S = helper_module(__file__)  # experiments/_settings.py
C = helper_module(__file__, "compression")  # exp-b's shared checks (long enough, targets, levels)

NAME = "redundancy"
DESCRIPTION = "COCO-EF against the redundancy s for cyclic and frc codes, in iterations and in simulated time"
TARGET_GAP = 1e-3
CODED = ("coco-ef", "coco-ef21", "gc", "gc-compressed", "gc-unbiased", "gc-diana", "onebit-gc")
TIMED = ("coco-ef", "coco-ef21", "gc")
METHODS = CODED
EXPECTED = f"{NAME}: Expected"
OVER = ("seed", "data_seed", "lr", "wait_for")


def _redundancies(quick, m):
    return [0, 1, 2, 3] if quick else [0, 1, 4, 9]


def grid(quick: bool = False):
    base = S.linreg(quick)
    m = base.num_devices
    ss = _redundancies(quick, m)

    def frc_invalid(p):  # frc needs (s + 1) | M
        return p["allocation"] == "frc" and m % (p["redundancy"] + 1) != 0

    iterations = C.tuned(
        base,
        {"preset": list(CODED), "allocation": ["cyclic", "frc"], "redundancy": ss},
        "iterations",
        quick,
        exclude=frc_invalid,
    )
    time = C.tuned(
        base.replace(straggler="latency"),
        {"preset": list(TIMED), "allocation": ["cyclic", "frc"]},
        "time",
        quick,
        zip_axes={"redundancy": ss, "wait_for": [m - s for s in ss]},
        exclude=frc_invalid,
    )
    return [iterations, time]


def figures(df):
    df, y = tables.with_gap(df)
    if "method" in df and (df.method == "coco-ef").any():
        df = df[df.method == "coco-ef"]  # the figures draw COCO-EF; the observations compare the rest
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
                "over": OVER,
                "title": f"after {steps} iterations (Bernoulli p = 0.2)",
            },
            {
                "finals": tables.steps_to_target(tm, y, TARGET_GAP, x="time"),
                "x": "redundancy",
                "y": "time",
                "hue": "allocation",
                "ylabel": f"Simulated time to F − F* ≤ {TARGET_GAP:g} (time units)",
                "title": "time to target (wait for M − s fastest)",
                "over": OVER,
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
                "over": OVER,
                "logy": False,
            },
        ],
        title=f"Redundancy: cyclic vs fractional repetition code (COCO-EF at its tuned lr, {tables.setting_label(df)})",
    )
    return {"vs_s": fig}


def _coco(df):
    return df[df.method == "coco-ef"] if "method" in df else df


def _step_times(tm):
    """One row per run: "final" = its simulated time per iteration."""
    tm = tm[tm["step"] > 0]
    return tables.final_values(tm.assign(step_time=tm["time"] / tm["step"]), "step_time")


def _time_to(tm, y, target):
    """One row per run: "final" = the simulated time at which `y` first is <= `target`
    times its initial value (NaN if never)."""
    return tables.steps_to_target(C.relative_gap(tm, y), "rel", target, x="time")


def observations(df):
    df, y, what = S.gap_of(df)
    out = []
    it = df[df.part == "iterations"]
    if not it.empty:
        steps = int(it["steps"].max())
        fin = tables.final_means(it, y, by=("method", "allocation", "redundancy"))
        for (method, alloc), g in fin.groupby(["method", "allocation"]):
            g = g.sort_values("redundancy")
            out.append(
                f"{method}, {alloc}: mean {what} after {steps} iterations (Bernoulli p = 0.2), by s: "
                + rp.listing({f"s = {int(s)}": v for s, v in zip(g.redundancy, g.final)})
                + "."
            )
        coco = tables.final_values(_coco(it), y)
        if not coco.empty:
            ss = sorted(coco["redundancy"].unique())
            for alloc in sorted(set(coco["allocation"])):
                sub = coco[coco.allocation == alloc]
                if {ss[0], ss[-1]} <= set(sub["redundancy"]) and ss[0] != ss[-1]:
                    d = C.between_levels(sub, "redundancy", ss[-1], ss[0], "coco-ef", where=alloc)
                    out += [x.sentence(f"final {what}") for x in d]
            both = coco[coco.redundancy.isin(set(coco[coco.allocation == "frc"]["redundancy"]))]
            diffs = tables.paired_differences(
                both, "cyclic", "frc", by=("redundancy",), hue="allocation", log=True
            )
            out += [f"COCO-EF: {x.sentence(f'final {what}')}" for x in diffs]
        s = C.flatness_sentence(it, y, by=("allocation", "redundancy"), hue="method", what="iterations")
        if s:
            out.append(s)
    tm = df[df.part == "time"]
    if not tm.empty:
        st = _step_times(_coco(tm))
        for alloc, g in st.groupby("allocation"):
            means = g.groupby("redundancy")["final"].mean()
            out.append(
                f"COCO-EF, {alloc}: mean simulated time per iteration (waiting for the M − s fastest), by s: "
                + rp.listing({f"s = {int(s)}": v for s, v in means.items()})
                + "."
            )
        coco_tm = _coco(tm).assign(setting=lambda d: d["allocation"] + ", s = " + d["redundancy"].astype(str))
        out += C.reach_sentences(coco_tm, y, "time", by=("setting",), what=f"{what} (COCO-EF)")
        s = C.flatness_sentence(tm, y, by=("allocation", "redundancy"), hue="method", what="time")
        if s:
            out.append(s)
    return out or ["No iterations or time rows."]


def claims(df):
    df, y, what = S.gap_of(df)
    out = []
    it = (
        tables.final_values(_coco(df[df.part == "iterations"]), y)
        if (df.part == "iterations").any()
        else None
    )
    if it is not None and not it.empty:
        ss = sorted(it["redundancy"].unique())
        diffs = []
        for alloc in sorted(set(it["allocation"])):
            sub = it[it.allocation == alloc]
            hi = max(sub["redundancy"])
            if hi > ss[0]:
                diffs += C.between_levels(sub, "redundancy", hi, ss[0], "coco-ef", where=alloc)
        out.append(
            rp.claim_all(
                f"More redundancy lowers COCO-EF's {what} per iteration (largest s below s = {ss[0]}, each code)",
                EXPECTED,
                diffs,
            )
        )
    tm = _coco(df[df.part == "time"])
    if not tm.empty:
        st = _step_times(tm)
        ss = sorted(st["redundancy"].unique())
        if len(ss) > 1:
            diffs = [
                d
                for alloc in sorted(set(st["allocation"]))
                for d in C.between_levels(
                    st[st.allocation == alloc],
                    "redundancy",
                    max(st[st.allocation == alloc]["redundancy"]),
                    ss[0],
                    "coco-ef",
                    where=alloc,
                )
                if max(st[st.allocation == alloc]["redundancy"]) > ss[0]
            ]
            out.append(
                rp.claim_all(
                    f"An iteration takes longer with more redundancy (largest s above s = {ss[0]}, simulated time)",
                    EXPECTED,
                    diffs,
                    expect="above",
                )
            )
        target = S.TARGETS[0]
        hits = _time_to(tm, y, target)
        cyc = hits[hits.allocation == "cyclic"]
        ss = sorted(cyc["redundancy"].unique())
        if len(ss) > 2:
            out.append(
                rp.claim_all(
                    f"The time to {target:g} of the initial {what} grows beyond small s (cyclic: largest s above s = 1)",
                    EXPECTED,
                    C.between_levels(cyc, "redundancy", ss[-1], 1, "coco-ef", where="cyclic"),
                    expect="above",
                )
            )
    return out
