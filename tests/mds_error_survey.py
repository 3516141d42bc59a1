"""Survey of the float error of cyclic_mds + the `optimal` decoder (not a test).

For each (M, s) it decodes many straggler sets (every burst of s consecutive devices,
then random sets of size 0..s) with the jitted float32 `decode_weights`, encodes and
decodes gradient draws as the engine does (coded = B g, g_hat = w @ coded, in the
dtype), and records, per set, in units of the dtype's eps:

* rho = ||B^T w - 1/K||_1 (B as rounded to the dtype), the residual of the computed
  weights (the SVD's backward error and the rounding of B);
* kappa_w = sum_m |w_m| ||B_m||_1 of the computed weights, against kappa (the float64
  worst case over every set, `cyclic_mds_condition`) and kappa_S (this set's float64
  minimum-norm weights);
* err = ||g_hat - grad F|| / max_k ||grad f_k|| for three gradient families: iid
  N(0, 1) partitions, a common direction plus 10 % noise (iid data), and the
  adversarial g_k = sign(r_k) v that turns rho into error exactly.

    python tests/mds_error_survey.py [--draws 20] [--sets 300] [--seed N] [--json out.json]
    JAX_ENABLE_X64=1 python tests/mds_error_survey.py --dtype float64 ...

Prints one row per (M, s) and the worst ratios, among them err / `decode_error_bound`
(the calibrated estimate, "e/est"); the numbers quoted in coco_jax/cyclic_mds.py come
from this script (with OPENBLAS_NUM_THREADS=1 on a shared machine).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np

from coco_jax.coding import decode_weights
from coco_jax.cyclic_mds import cyclic_mds_analysis, cyclic_mds_matrix, decode_error_bound


@jax.jit
def _weights(B, masks):
    return jax.vmap(lambda st: decode_weights("optimal", B, st, jnp.zeros(B.shape[0], B.dtype), 1.0))(masks)


@jax.jit
def _estimate(B, w, grads):
    """Per set i: g_hat_i = w_i @ (B @ grads_i) in float32 (grads [N, K, D])."""
    return jax.vmap(lambda wi, gi: wi @ (B @ gi))(w, grads)


def _sets(m_dev: int, s: int, count: int, rng) -> np.ndarray:
    sets = [tuple((b + np.arange(s)) % m_dev) for b in range(m_dev)]
    if math.comb(m_dev, s) <= count:
        sets = list(itertools.combinations(range(m_dev), s))
    while len(sets) < count:
        j = s if rng.random() < 0.8 else int(rng.integers(0, s))
        sets.append(tuple(rng.choice(m_dev, j, replace=False)))
    masks = np.zeros((len(sets), m_dev), bool)
    for i, dead in enumerate(sets):
        masks[i, list(dead)] = True
    return masks


def _kappa_sets(B64: np.ndarray, masks: np.ndarray) -> np.ndarray:
    k_parts = B64.shape[1]
    A = np.swapaxes(B64[None] * (~masks)[:, :, None], 1, 2)  # [N, K, M]
    w = np.linalg.pinv(A, rcond=1e-10) @ np.full(k_parts, 1.0 / k_parts)
    return np.abs(w) @ np.abs(B64).sum(axis=1)


def survey(
    m_dev: int, s: int, draws: int, count: int, seed: int, dim: int = 16, dtype: str = "float32"
) -> dict:
    rng = np.random.default_rng([seed, m_dev, s])
    eps = float(np.finfo(dtype).eps)
    B64 = cyclic_mds_matrix(m_dev, s)
    B32 = B64.astype(dtype)
    masks = _sets(m_dev, s, count, rng)
    n = len(masks)
    w = np.asarray(_weights(jnp.asarray(B32), jnp.asarray(masks)), np.float64)  # [N, M]
    Bd = B32.astype(np.float64)
    r = w @ Bd - 1.0 / m_dev  # [N, K] exact up to float64 rounding
    rho = np.abs(r).sum(axis=1)
    kappa_w = np.abs(w) @ np.abs(Bd).sum(axis=1)
    kappa_s = _kappa_sets(B64, masks)
    kappa = cyclic_mds_analysis(m_dev, s).kappa
    errs = {"iid": [], "common": [], "adversarial": []}
    for _ in range(draws):
        v = rng.standard_normal(dim)
        fam = {
            "iid": rng.standard_normal((n, m_dev, dim)),
            "common": v + 0.1 * rng.standard_normal((n, m_dev, dim)),
            "adversarial": np.sign(r)[:, :, None] * v * (1 + 0.01 * rng.standard_normal((n, m_dev, 1))),
        }
        for name, g in fam.items():
            g32 = g.astype(dtype)
            ghat = np.asarray(
                _estimate(jnp.asarray(B32), jnp.asarray(w, dtype), jnp.asarray(g32)), np.float64
            )
            g64 = g32.astype(np.float64)
            err = np.linalg.norm(ghat - g64.mean(axis=1), axis=1) / np.linalg.norm(g64, axis=2).max(axis=1)
            errs[name].append(err)
    errs = {k: np.max(v, axis=0) / eps for k, v in errs.items()}  # [N] worst over draws, in eps
    worst = max(errs.values(), key=lambda e: e.max())
    return {
        "M": m_dev,
        "s": s,
        "sets": n,
        "kappa": kappa,
        "rho_max": float(rho.max() / eps),
        "rho_over_kappa_s": float((rho / eps / kappa_s).max()),
        "kappa_w_over_kappa_s": float((kappa_w / kappa_s).max()),
        "err_max": {k: float(e.max()) for k, e in errs.items()},
        "err_over_kappa": float(max(e.max() for e in errs.values()) / kappa),
        "err_over_kappa_s": float(max((e / kappa_s).max() for e in errs.values())),
        "err_over_sqrtM_kappa_s": float(max((e / (math.sqrt(m_dev) * kappa_s)).max() for e in errs.values())),
        "err_worst_kappa_s": float(kappa_s[int(np.argmax(worst))]),
        # the calibrated estimate `decode_error_bound`
        "err_over_estimate": float(
            max(e.max() for e in errs.values()) * eps / decode_error_bound(kappa, m_dev, dtype)
        ),
        "rho_over_estimate": float(rho.max() / decode_error_bound(kappa, m_dev, dtype)),
        # its two parts: (err - 0.8 sqrt(M)) / kappa and err / sqrt(M) at kappa <= 2
        "kappa_part": float((max(e.max() for e in errs.values()) - 0.8 * math.sqrt(m_dev)) / kappa),
        "sqrt_m_part": float(max(e.max() for e in errs.values()) / math.sqrt(m_dev)) if kappa <= 2 else 0.0,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--draws", type=int, default=20)
    p.add_argument("--sets", type=int, default=300)
    p.add_argument("--seed", type=int, default=int(np.random.SeedSequence().entropy % 2**31))
    p.add_argument("--M", type=int, nargs="*", default=[8, 10, 12, 16, 20, 25, 30, 40, 50, 64, 80, 100])
    p.add_argument("--s", type=int, nargs="*", default=[1, 2, 3, 4])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--json")
    a = p.parse_args()
    rows = []
    print(f"seed {a.seed}; {a.dtype}; all in eps of {a.dtype}", flush=True)
    print(
        f"{'M':>4} {'s':>2} {'kappa':>9} {'rho':>8} {'rho/kS':>7} {'kw/kS':>6} "
        f"{'iid':>8} {'common':>8} {'adv':>8} {'e/k':>6} {'e/kS':>6} {'e/rMkS':>7} {'e/est':>6}"
    )
    for m_dev in a.M:
        for s in a.s:
            if s >= m_dev:
                continue
            row = survey(m_dev, s, a.draws, a.sets, a.seed, dtype=a.dtype)
            rows.append(row)
            e = row["err_max"]
            print(
                f"{m_dev:4d} {s:2d} {row['kappa']:9.3g} {row['rho_max']:8.3g} {row['rho_over_kappa_s']:7.3g} "
                f"{row['kappa_w_over_kappa_s']:6.3f} {e['iid']:8.3g} {e['common']:8.3g} {e['adversarial']:8.3g} "
                f"{row['err_over_kappa']:6.3f} {row['err_over_kappa_s']:6.3f} {row['err_over_sqrtM_kappa_s']:7.3f} "
                f"{row['err_over_estimate']:6.3f}",
                flush=True,
            )
    print("worst err/(eps kappa):", max(r["err_over_kappa"] for r in rows))
    print("worst err/(eps kappa_S):", max(r["err_over_kappa_s"] for r in rows))
    print("worst rho/(eps kappa_S):", max(r["rho_over_kappa_s"] for r in rows))
    print("worst err/estimate:", max(r["err_over_estimate"] for r in rows))
    print("worst rho/estimate:", max(r["rho_over_estimate"] for r in rows))
    print("worst kappa part:", max(r["kappa_part"] for r in rows if r["kappa"] > 2))
    print("worst sqrt(M) part (kappa <= 2):", max(r["sqrt_m_part"] for r in rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"seed": a.seed, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
