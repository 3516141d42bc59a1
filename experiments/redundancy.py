"""What redundancy buys, and what it costs in time.

Question: with COCO-EF, how does the redundancy s (each partition on s+1 devices)
change (a) the optimality gap after a fixed number of iterations with Bernoulli
stragglers, and (b) the simulated wall-clock time to a target gap when compute times
are random (shifted exponential per partition, so a device's time grows with its load
s+1) and the server waits for the M − s fastest devices, for the cyclic and the
fractional repetition (frc) codes?

Expected: (a) more redundancy lowers the gap per iteration: every partition has more
chances to reach the server, the decoded gradient is less noisy. (b) in time the
trade-off of Tandon et al. appears: each device computes s+1 partitions, so a step
gets slower with s while waiting for fewer devices helps only a little; beyond s = 1
the time to the target grows. frc and cyclic behave alike at equal s.

Observed (quick variant): the gap after 200 iterations falls from 4.1e-3 (s = 0) to
0.8e-3 (cyclic, s = 3); cyclic is ahead of frc at s = 1. In time, an iteration costs
4.4 units at s = 0 and 10.3 at s = 3, so the time to the target grows from 130 to 310
units: in this latency model redundancy never pays for itself in time.

Command: coco-jax run experiments/redundancy.py --quick   (full: without --quick, a GPU)
"""

import coco_jax as cj
from coco_jax import plots
from coco_jax.experiment import seeds, standard_config

NAME = "redundancy"
DESCRIPTION = "COCO-EF against the redundancy s for cyclic and frc codes, in iterations and in simulated time"
TARGET_GAP = 1e-2


def _redundancies(quick, m):
    return [0, 1, 2, 3] if quick else [0, 1, 3, 4, 9]


def grid(quick: bool = False):
    base = standard_config(quick)
    m = base.num_devices
    ss = _redundancies(quick, m)

    def frc_invalid(p):  # frc needs (s + 1) | M
        return p["allocation"] == "frc" and m % (p["redundancy"] + 1) != 0

    iterations = cj.Grid(
        base=base,
        axes={"allocation": ["cyclic", "frc"], "redundancy": ss, "seed": seeds(quick)},
        exclude=frc_invalid,
        name="iterations",
    )
    time = cj.Grid(
        base=base.replace(straggler="latency"),
        axes={"allocation": ["cyclic", "frc"], "seed": seeds(quick)},
        zip_axes={"redundancy": ss, "wait_for": [m - s for s in ss]},
        exclude=frc_invalid,
        name="time",
    )
    return [iterations, time]


def figures(df):
    df, y = plots.with_gap(df)
    it = df[df.part == "iterations"]
    tm = df[df.part == "time"]
    steps = int(it["steps"].max())
    per_step = tm.assign(step_time=tm["time"] / tm["step"].where(tm["step"] > 0))
    fig = plots.finals_figure(
        [
            {
                "finals": plots.final_values(it, y),
                "x": "redundancy",
                "y": y,
                "hue": "allocation",
                "title": f"after {steps} iterations (Bernoulli p = 0.2)",
            },
            {
                "finals": plots.steps_to_target(tm, y, TARGET_GAP, x="time"),
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
                "finals": plots.final_values(per_step, "step_time"),
                "x": "redundancy",
                "y": "step_time",
                "hue": "allocation",
                "ylabel": "Mean simulated time per iteration",
                "title": "cost of an iteration",
                "over": ("seed", "wait_for"),
                "logy": False,
            },
        ],
        title="Redundancy: cyclic vs fractional repetition code (COCO-EF)",
    )
    return {"vs_s": fig}
