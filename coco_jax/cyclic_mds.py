"""The cyclic MDS gradient code (Tandon, Lei, Dimakis, Karampatziakis 2017): its
closed-form construction from a real BCH / negacyclic generator, its conditioning
analysis (`cyclic_mds_analysis`), the floating-point error of the optimal decoder (what
is guaranteed, and the calibrated estimate `decode_error_bound`), and the config-time
refusal of what the run's dtype cannot decode (`check_cyclic_mds`).

Same support as ``cyclic`` (device m holds m, ..., m+s mod M), K = M, with real
coefficients such that (1, ..., 1) lies in the span of the rows of ANY M - s devices.
Rows are scaled so that every column sums to s+1 (like ``cyclic``), so the ``received``
decoder is exact without stragglers. See `coco_jax.coding` for the other codes.

Exactness with the ``optimal`` decoder: exact in exact arithmetic. kappa = max over
sets of <= s stragglers of sum_m |w_m| ||B_m||_1, w the exact minimum-norm weights
(`cyclic_mds_condition`; 1 for an uncoded average), grows like M^(s-1) (bursts of
consecutive stragglers are the worst sets): M = 20: s = 2..6 -> 9.5, 40, 200, 378,
1415; M = 50: s = 2, 3, 4 -> 22, 253, 2653; M = 100: s = 2, 3 -> 42, 1013; s = 1 ->
at most 2.3.

Floating point. The engine rounds B once to the run's dtype, takes w from a truncated
SVD of B_S^T (`coding.decode_weights`), and computes the coded gradients c = B g (s+1
nonzero terms per row) and g_hat = w @ c (M terms), all in that dtype. Let u = eps/2,
gamma_n = n u / (1 - n u) (Higham, Accuracy and Stability of Numerical Algorithms,
2002, ch. 3: a sum of n products in ANY order, with or without FMA, is within
gamma_n sum |x_i y_i|; (1 + gamma_a)(1 + gamma_b) <= 1 + gamma_(a+b)), r = B^T w - 1/K
the residual of the computed weights against the B actually used, rho_w = ||r||_1 and
kappa_w = sum_m |w_m| ||B_m||_1. Then:

1. Guaranteed, for any summation order, SIMD width, FMA or thread count:
   g_hat - grad F = sum_k r_k grad f_k + w^T dc + ds, |dc_m| <= gamma_(s+1) sum_k
   |B_mk| |grad f_k| and |ds| <= gamma_M sum_m |w_m| |c_m| (componentwise), so
       ||g_hat - grad F|| <= (rho_w + gamma_(M+s+1) kappa_w) max_k ||grad f_k||.
   The rho_w term is attained (g_k = sign(r_k) v); the gamma term is a worst case
   (about M/2 eps kappa) that cancelling rounding errors never approach.
2. Not guaranteed a priori: rho_w. The SVD is normwise backward stable (the computed
   w solves a problem within p u ||B|| of B_S^T, with a modest p(M) that LAPACK does
   not state), so ||r||_2 <~ p u ||B||_2 ||w||_2 and rho_w <= sqrt(K) ||r||_2; with
   ||B||_2 ||w||_1 within a small factor of kappa for these balanced codes, rho_w ~
   c(M) eps kappa, plus a kappa-free part from the rounding of a well-conditioned
   solve. Rounding B to the dtype alone adds at most u kappa to rho_w.
3. Calibrated estimate (`decode_error_bound`; `check_cyclic_mds` refuses on it):
       ||g_hat - grad F|| <= eps (MDS_ERROR_FACTOR kappa + MDS_SQRT_M_FACTOR sqrt(M))
                             max_k ||grad f_k||,   eps (7 kappa + 8 sqrt(M)).
   Measured by tests/mds_error_survey.py (the jitted decoder; every burst of s and
   200-400 random sets of <= s stragglers per (M, s); iid, common-direction and
   adversarial g_k = sign(r_k) v gradients): float32 for M = 8..100, s = 1..4 (18,000
   sets, 60 draws each; again with one XLA thread) and M = 150..379, s = 1, 2; float64
   for M = 8..100, s = 1..4. Worst error over the estimate: 0.44 (float32, M = 300,
   s = 2), 0.42 (float64, M = 25, s = 1): the constants are at least 2.2 times the
   worst measured. err / (eps kappa) is at most 2.9 where kappa >= 10 (float32 M = 64,
   s = 3; 3.5 at M = 300, s = 2) and 10.1 overall (M = 100, s = 1, kappa = 1, where
   the sqrt(M) part dominates: at most 1.3 eps sqrt(M) in float32, 4.5 eps sqrt(M) in
   float64, whose LAPACK path differs); kappa_w <= 1.001 times the set's exact kappa.
   Not covered: singular values near the cutoff (M = 64..100, s = 4, refused anyway).
   Where float32 is accepted, the guaranteed bound 1. with the measured rho_w is about
   (M + s + 1) / 14 times the estimate (7 at M = 100): the gap is the worst case of
   the rounding of the two sums.

`check_cyclic_mds` refuses the configurations whose estimate (relative to max_k
||grad f_k||; for unrelated partition gradients the error relative to ||grad F|| is
about sqrt(K) times larger) exceeds 1e-4 in float32 (about kappa > 108 to 115: M = 20
allows s <= 3, M = 50 and M = 100 s <= 2) or 1e-10 in float64 (kappa > 6.4e4: M = 50
allows s <= 4, M = 100 s <= 3).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import NamedTuple

import numpy as np

from coco_jax.config import float_dtype_of
from coco_jax.decoders import svd_cutoff
from coco_jax.errors import fail
from coco_jax.registry import register_code


class _MdsCode(NamedTuple):
    """The parts of the cyclic MDS code of `_mds_code` (all float64, read-only)."""

    B: np.ndarray  # [M, M] the code, columns summing to s+1
    g: np.ndarray  # [s+1] generator coefficients g_0 .. g_s (palindromic, real)
    twist: float  # +1: cyclic, -1: negacyclic (C[m, k] carries -g_j where m + j wraps)
    a: np.ndarray  # [M] row weights: v = C^T a
    v: np.ndarray  # [M] column scales: B = (s+1) diag(a) C diag(1/v)
    theta: np.ndarray  # [s] angles of the roots of g


def _mds_generator(m_dev: int, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients g_0..g_s of g(x) = prod_j (x - e^{i theta_j}) and the angles theta_j.

    theta_j = pi + 2 pi (j - (s-1)/2) / M, j = 0..s-1: s consecutive points of spacing
    2 pi/M centred on -1, closed under conjugation, so g is real (and palindromic).
    For s <= M/2, multiplied out as real quadratic factors x^2 - 2 cos(theta) x + 1
    (and x + 1 when s is odd), whose coefficients are non-negative: no cancellation.
    For s > M/2, interpolated from its values at the M - s other points x_k with
    x_k^M = x_0^M: g(x_k) = M x_k^(M-1) / prod_{l != k, l not a root} (x_k - x_l), and
    g_j = (1/M) sum_k g(x_k) x_k^(-j), a sum of M - s terms (exact all-ones for
    s = M - 1). Both agree to 1e-13 where both are accurate.
    """
    theta = np.pi + 2.0 * np.pi * (np.arange(s) - (s - 1) / 2.0) / m_dev
    if 2 * s <= m_dev:
        g = np.ones(1)
        for j in range(s // 2):
            g = np.convolve(g, [1.0, -2.0 * math.cos(theta[j]), 1.0])
        if s % 2:
            g = np.convolve(g, [1.0, 1.0])
        return g, theta
    theta0 = np.pi - np.pi * (s - 1) / m_dev
    others = np.exp(1j * (theta0 + 2.0 * np.pi * np.arange(s, m_dev) / m_dev))  # [M - s]
    vals = np.array(
        [m_dev * xk ** (m_dev - 1) / np.prod(xk - np.delete(others, i)) for i, xk in enumerate(others)]
    )
    powers = others[None, :] ** (-np.arange(s + 1)[:, None])  # [s+1, M-s]
    g = np.real(powers @ vals) / m_dev
    g = 0.5 * (g + g[::-1])  # exactly palindromic
    return g, theta


@functools.lru_cache(maxsize=128)
def _mds_code(m_dev: int, s: int) -> _MdsCode:
    """Build the cyclic MDS code; see `cyclic_mds_matrix` for the construction."""
    if s == 0:
        eye = np.eye(m_dev)
        parts = _MdsCode(eye, np.ones(1), 1.0, np.ones(m_dev), np.ones(m_dev), np.zeros(0))
    else:
        g, theta = _mds_generator(m_dev, s)
        twist = 1.0 if (m_dev - s) % 2 == 1 else -1.0  # e^{i theta_j M} = twist for every j
        C = np.zeros((m_dev, m_dev))
        for m in range(m_dev):
            for j in range(s + 1):
                C[m, (m + j) % m_dev] = g[j] * (twist if m + j >= m_dev else 1.0)
        a = np.ones(m_dev)
        if twist < 0 and s % 2 == 1:
            a[0] = 2.0  # with a = 1 the column sum of column (s-1)/2 would vanish
        v = C.T @ a  # in the row space of C; |v_k| >= g_{floor(s/2)} > 0 (see docstring)
        if np.abs(v).min() <= 1e-12 * np.abs(v).max():
            fail("redundancy", s, f"allocation='cyclic_mds' has no code for num_devices={m_dev}")
        B = (s + 1) * a[:, None] * C / v[None, :] + 0.0  # + 0.0: no negative zeros
        parts = _MdsCode(B, g, twist, a, v, theta)
    for arr in parts:
        if isinstance(arr, np.ndarray):
            arr.setflags(write=False)
    return parts


def cyclic_mds_matrix(num_devices: int, redundancy: int) -> np.ndarray:
    """The cyclic MDS gradient code as a float64 [M, M] array (a fresh copy).

    Row m is supported on m, ..., m+s (mod M), every column sums to s + 1, and for
    every set S of M - s rows the all-ones vector lies in their span: any M - s devices
    decode exactly (Tandon et al. 2017; real BCH form of Raviv, Tamo, Tandon, Dimakis
    2018).

    Construction (deterministic, closed form, no random numbers): g(x) = prod_j
    (x - e^{i theta_j}) with theta_j = pi + 2 pi (j - (s-1)/2)/M, j = 0..s-1 (s
    consecutive M-th roots of unity, or of -1, centred on -1; real, palindromic). C is
    the [M, M] matrix whose row m is x^m g(x) reduced mod x^M - t, t = e^{i theta_j M}
    (t = +1, a cyclic code, when M - s is odd; t = -1, negacyclic, when M - s is even):
    C[m, m+j mod M] = g_j, times t where m + j wraps. Then

        B = (s+1) diag(a) C diag(1/v),    v = C^T a,

    with a = 1 (a_0 = 2 when t = -1 and s is odd). Why it works:

    * The column space of C is the (constacyclic) code of length M and dimension
      M - s with the s consecutive roots e^{i theta_j} (g is palindromic), which is MDS
      by the BCH bound (its parity checks are Vandermonde in distinct points). Any
      M - s coordinates of an [M, M-s] MDS code are an information set, so every set
      of M - s rows of C is linearly independent. Scaling rows and columns keeps this.
    * v = C^T a lies in the row space of C, so 1 = v / v lies in the row space of
      C diag(1/v): every M - s rows span the whole row space, which contains 1.
    * v has no zero entry, so B is finite and its columns sum to (s+1) v_k / v_k =
      s + 1: for t = +1, v = g(1) 1 > 0; for t = -1 and s <= M/2 (g's coefficients
      are then positive), v_k = sum_j g_j for k >= s and, for k < s, a signed partial
      sum at least the central coefficient g_{floor(s/2)} in size (that is why a_0 = 2
      when s is odd); for s > M/2 checked numerically (min |v| >= 0.0098 max |v| for all
      M < 160). A vanishing entry would raise ConfigError.

    When M - s is odd this is the real BCH code (a = 1, v = g(1) 1, B = (s+1)/g(1) C).
    When M - s is even no conjugate-closed run of s consecutive M-th roots of unity
    avoids 1, so no real cyclic BCH code contains 1; the negacyclic code (roots at
    (2j+1)-th powers of e^{i pi/M}) with the column scaling 1/v does. Worst-case kappa
    (`cyclic_mds_analysis`, every straggler set) against the construction used before
    (Tandon et al.'s Algorithm 2 with a Gaussian H, best of 6 seeds, when M - s is
    even): M = 8, s = 4: 14.5 vs 99; M = 16, s = 4: 107 vs 13760; M = 20, s = 2: 9.5
    vs 676; M = 20, s = 4: 200 vs 27680; M = 30, s = 4: 622 vs 9.4e5; M = 50, s = 2:
    22 vs 6308; M = 50, s = 4: 2653 vs 4.7e7; M = 100, s = 2: 42 vs 7.2e4 (M - s odd:
    the same BCH code as before). The choice v = C^T a (rather than v = the projection
    of 1 on the row space) keeps the rows balanced (row norms within a factor 4.5; the
    projection needs a row scaling whose entries range over up to 1e15) with a similar
    kappa (0.75 to 1.9 times the projection's). s = 0 gives B = I; s = M - 1 gives the
    all-ones matrix.
    """
    return _mds_code(int(num_devices), int(redundancy)).B.copy()


class CyclicMdsCondition(NamedTuple):
    """How exactly the cyclic MDS code decodes: see `cyclic_mds_analysis`.

    Attributes:
        num_devices, redundancy: M and s.
        kappa: max over straggler sets E with |E| <= s of sum_m |w_m| ||B_m||_1, w the
            minimum-norm exact decoding weights (B_S^T w = 1/M, w_E = 0). It is the
            factor by which rounding in the coded gradients (and backward error of the
            decoder) reaches g_hat, relative to max_k ||grad f_k||: 1 for an uncoded
            average. Exact (float64 arithmetic) when ``exhaustive``, else an upper bound.
        residual: max over the enumerated sets of M * ||B_S^T w - 1/M||_inf in float64
            (0 up to rounding; ``nan`` when not enumerated).
        sigma_floor: lower bound on every nonzero singular value of a survivor matrix
            B_S (|E| <= s), relative to sigma_max(B). The `optimal` decoder keeps every
            singular value above ``rcond * sigma_max``, so it decodes exactly whenever
            sigma_floor > rcond.
        exhaustive: True when every set of <= s stragglers was enumerated.
        num_sets: how many straggler sets were enumerated (0 when bounded).
    """

    num_devices: int
    redundancy: int
    kappa: float
    residual: float
    sigma_floor: float
    exhaustive: bool
    num_sets: int


MDS_RESIDUAL_LIMIT = 1e-6  # float64 residual above which an enumerated set counts as not decodable
MDS_ENUMERATION_LIMIT = 1_000_000  # straggler sets enumerated exactly (about 4 s); beyond, a rigorous bound


def _combination_chunks(n: int, j: int, chunk: int):
    """All j-subsets of range(n) as int arrays [c, j], lexicographic, in chunks."""
    it = itertools.combinations(range(n), j)
    while True:
        flat = np.fromiter(itertools.chain.from_iterable(itertools.islice(it, chunk)), np.int64)
        if flat.size == 0:
            return
        yield flat.reshape(-1, j)


def _mds_enumerate(code: _MdsCode, s: int, sizes) -> tuple[float, float, float, float]:
    """(kappa, residual, sigma_floor, w2) over every straggler set whose size is in
    ``sizes`` (a subset of 1..s, containing s); w2 = max ||w||_2 over the sets of size s.

    With N [M, s] an orthonormal basis of the left null space of B and w0 the
    minimum-norm solution of B^T w0 = 1/M (w0 is orthogonal to N), the exact
    solutions vanishing on E are w0 - N alpha with N_E alpha = w0_E; the minimum-norm
    one has alpha = pinv(N_E) w0_E (||w||^2 = ||w0||^2 + ||alpha||^2). One small solve
    per set instead of an M x M least-squares problem. When s > M/2 the sets of size s
    are solved on the M - s survivors instead (B_S^T w = 1/M by an SVD of B_S, which
    also gives sigma_min(B_S) exactly).

    Singular values: for |E| = s, B_S is (M-s) x M of full row rank and, with
    G = B B^T, Kp = pinv(G), tr((B_S B_S^T)^{-1}) = tr(Kp) + tr((N_E N_E^T)^{-1} Kp_EE)
    (block inverse of the orthogonal [U_r N]), so sigma_min(B_S) >= tr(...)^{-1/2}
    (within a factor 1.5 of the exact value in every case we compared). Fewer
    stragglers only add rows, and by interlacing the M - s largest singular values
    can only grow.
    """
    B = code.B
    n = B.shape[0]
    target = np.full(n, 1.0 / n)
    U, sv, _ = np.linalg.svd(B)
    N = U[:, n - s :]  # [n, s]
    Kp = (U[:, : n - s] / sv[: n - s] ** 2) @ U[:, : n - s].T  # pinv(B B^T) [n, n]
    tr_kp = float(np.trace(Kp))
    w0 = np.linalg.pinv(B.T, rcond=1e-12) @ target  # [n]
    rows = np.abs(B).sum(axis=1)  # [n] ||B_m||_1
    kappa = float(rows @ np.abs(w0))
    residual = float(n * np.abs(B.T @ w0 - target).max())
    sigma_min, w2 = math.inf, 0.0  # smallest lower bound on sigma_min(B_S), |E| = s
    for j in sizes:
        for E in _combination_chunks(n, j, max(1_000, 4_000_000 // (n * (min(j, n - j) + 1)))):
            try:
                if j == s and 2 * s > n:  # solve on the survivors
                    alive = np.ones((len(E), n), bool)
                    np.put_along_axis(alive, E, False, axis=1)
                    S = np.nonzero(alive)[1].reshape(len(E), n - s)  # [c, n - s]
                    u, sig, vt = np.linalg.svd(B[S], full_matrices=False)  # B_S = u sig vt
                    wS = (u @ ((vt @ target) / sig)[..., None])[..., 0]  # [c, n - s]
                    w = np.zeros((len(E), n))
                    np.put_along_axis(w, S, wS, axis=1)
                    sigma_min = min(sigma_min, float(sig[:, -1].min()))
                else:
                    NE = N[E]  # [c, j, s]
                    bE = w0[E]  # [c, j]
                    gram = NE @ np.swapaxes(NE, 1, 2)  # [c, j, j]
                    if j == s:
                        alpha = np.linalg.solve(NE, bE[..., None])[..., 0]  # [c, s]
                        kee = Kp[E[:, :, None], E[:, None, :]]  # [c, s, s]
                        tr = tr_kp + np.trace(np.linalg.solve(gram, kee), axis1=1, axis2=2)
                        sigma_min = min(sigma_min, float(1.0 / np.sqrt(tr.max())))
                    else:
                        y = np.linalg.solve(gram, bE[..., None])  # [c, j, 1]
                        alpha = (np.swapaxes(NE, 1, 2) @ y)[..., 0]  # [c, s]
                    w = w0[None, :] - alpha @ N.T  # [c, n]
                    np.put_along_axis(w, E, 0.0, axis=1)
            except np.linalg.LinAlgError:  # a set that cannot decode
                return math.inf, math.inf, 0.0, math.inf
            kappa = max(kappa, float((np.abs(w) @ rows).max()))
            if j == s:
                w2 = max(w2, float(np.sqrt((w * w).sum(axis=1)).max()))
            residual = max(residual, float(n * np.abs(w @ B - target).max()))
    if not (math.isfinite(kappa) and sigma_min > 0):
        return math.inf, math.inf, 0.0, math.inf
    return kappa, residual, sigma_min / float(sv[0]), w2


def _mds_bound(code: _MdsCode, s: int) -> tuple[float, float]:
    """Rigorous (kappa, sigma_floor) bounds over all straggler sets, without enumerating.

    The left null space of C is spanned by z_j[m] = e^{-i theta_j m}, so the decoding
    weights for a set E of s stragglers are w_m = u_m / ((s+1) M a_m) with
    u = a - Phi beta, Phi_E beta = a_E, Phi_E = diag(phase) V, V[e, j] = x_e^j,
    x_e = e^{-2 pi i e/M}: a Vandermonde system on s points of the unit circle. By
    Gautschi's bound ||beta||_1 <= ||a||_inf sum_e prod_{k != e} 2/|x_e - x_k|, and
    |x_e - x_k| = 2 sin(pi d/M) with at most two other points at each circular distance
    d, so the sum is at most s P, P = prod_{i=1}^{s-1} 1/sin(pi ceil(i/2)/M). Then
    kappa_s <= (1/M) sum_m (|a_m| + ||a||_inf s P) R_m with R_m = sum_k |C_mk|/|v_k|;
    fewer stragglers: ||w'||_2 <= ||w_E||_2 for any E containing the stragglers, so
    kappa <= ||w_E||_2 ||(||B_m||_1)_m||_2. About 3 times the exact kappa where both
    are known (M <= 100, s <= 4), far looser for s close to M; used only where
    enumeration is too long.
    """
    B, a, v = code.B, code.a, code.v
    n = B.shape[0]
    C = B * v[None, :] / ((s + 1) * a[:, None])  # the unscaled (constacyclic) code
    P = 1.0
    for i in range(1, s):
        P /= math.sin(math.pi * math.ceil(i / 2) / n)
    amax = float(np.abs(a).max())
    R = (np.abs(C) / np.abs(v)[None, :]).sum(axis=1)
    u_bound = np.abs(a) + amax * s * P  # [n] bound on |u_m|
    kappa_s = float((u_bound * R).sum() / n)
    w_bound = u_bound / ((s + 1) * n * np.abs(a))
    kappa_fewer = float(np.linalg.norm(w_bound) * np.linalg.norm(np.abs(B).sum(axis=1)))
    # sigma_min(N_E) >= sigma_min(Z_E) / ||Z||_2 with Z = diag(1/a) Phi and
    # ||Z_E^{-1}||_2 <= ||a||_inf ||V^{-1}||_2 <= ||a||_inf sqrt(s) P
    m_idx = np.arange(n)
    Z = np.exp(-1j * np.outer(m_idx, code.theta)) / a[:, None]
    z_norm = float(np.linalg.norm(Z, 2))
    sv = np.linalg.svd(B, compute_uv=False)
    sigma_floor = float(sv[n - s - 1] / sv[0]) / (z_norm * amax * math.sqrt(s) * P)
    return max(kappa_s, kappa_fewer), sigma_floor


@functools.lru_cache(maxsize=256)
def cyclic_mds_analysis(num_devices: int, redundancy: int) -> CyclicMdsCondition:
    """Conditioning of the cyclic MDS code over every set of <= s stragglers (cached).

    Three regimes (deterministic, float64):

    * at most `MDS_ENUMERATION_LIMIT` sets of <= s stragglers: every set enumerated
      (vectorised, one small solve per set: about 4 s per million sets); kappa exact.
    * else, at most that many sets of exactly s (s close to M): those are enumerated
      (kappa over them exact) and fewer stragglers are bounded by
      max ||w_E||_2 * ||(||B_m||_1)_m||_2 (the minimum-norm w for a subset E' of E is
      no longer than w_E); ``exhaustive=False``.
    * else the rigorous bounds of `_mds_bound` (about 3 times the exact kappa where
      both are known; the singular-value floor about 1000 times too low);
      ``exhaustive=False``, ``residual=nan``.
    """
    n, s = int(num_devices), int(redundancy)
    if not 0 <= s < n:
        fail("redundancy", s, f"must satisfy 0 <= redundancy < num_devices={n}")
    code = _mds_code(n, s)
    if s == 0:
        return CyclicMdsCondition(n, s, 1.0, 0.0, 1.0, True, 1)
    total = sum(math.comb(n, j) for j in range(s + 1))
    work = min(s, n - s) ** 2  # per set
    if total <= MDS_ENUMERATION_LIMIT and total * work <= 100 * MDS_ENUMERATION_LIMIT:  # every set
        kappa, residual, floor, _ = _mds_enumerate(code, s, range(1, s + 1))
        exhaustive, num_sets = True, total
    elif math.comb(n, s) <= MDS_ENUMERATION_LIMIT and math.comb(n, s) * work <= 100 * MDS_ENUMERATION_LIMIT:
        # s close to M: the sets of exactly s stragglers
        kappa, residual, floor, w2 = _mds_enumerate(code, s, [s])
        # fewer stragglers: ||w'||_2 <= ||w_E||_2 for any E of size s containing them
        kappa = max(kappa, w2 * float(np.linalg.norm(np.abs(code.B).sum(axis=1))))
        exhaustive, num_sets = False, math.comb(n, s)
    else:
        kappa, floor = _mds_bound(code, s)
        return CyclicMdsCondition(n, s, kappa, math.nan, floor, False, 0)
    if not residual <= MDS_RESIDUAL_LIMIT:  # some set does not decode (never seen)
        kappa, floor = math.inf, 0.0
    return CyclicMdsCondition(n, s, kappa, residual, floor, exhaustive, num_sets)


def cyclic_mds_condition(num_devices: int, redundancy: int) -> float:
    """kappa of `cyclic_mds_analysis`: the worst-case error amplification of the
    cyclic MDS code over every set of <= s stragglers (float64; exact by enumeration
    where feasible, else a rigorous upper bound). Cached and deterministic."""
    return cyclic_mds_analysis(int(num_devices), int(redundancy)).kappa


# Relative gradient error allowed by `check_cyclic_mds`, per run dtype, measured as
# ||g_hat - grad F|| / max_k ||grad f_k|| over every set of <= s stragglers.
MDS_TOLERANCE = {"float32": 1e-4, "float64": 1e-10}
# The calibrated estimate of `decode_error_bound` (module docstring, 3.):
# ||g_hat - grad F|| <= eps (MDS_ERROR_FACTOR kappa + MDS_SQRT_M_FACTOR sqrt(M)) max_k ||grad f_k||,
# at least 2.2 times the worst measured (3.5 eps kappa at M = 300; 4.5 eps sqrt(M) in float64).
MDS_ERROR_FACTOR = 7.0
MDS_SQRT_M_FACTOR = 8.0
# Largest M such that every M' <= M is accepted in float32 at this s (computed with
# `cyclic_mds_ok` by scanning M; acceptance is not monotone in M: the negacyclic
# codes, M - s even, are worse). s = 1: kappa <= 2.33 and every M <= 300 is accepted
# (checked; the singular-value floor, about 0.5/M, meets the cutoff near M = 6000).
# s >= 2 is limited by kappa (s = 2: kappa = 103 at M = 250). Used in error messages;
# the tests check the entries for s = 3..8.
_FLOAT32_MAX_DEVICES = {2: 249, 3: 30, 4: 17, 5: 14, 6: 13, 7: 12, 8: 13, 9: 14, 10: 13, 11: 14, 12: 15}


def decode_error_bound(kappa: float, num_devices: int, dtype_name: str) -> float:
    """The calibrated estimate of ||g_hat - grad F|| / max_k ||grad f_k|| for a decode
    whose error amplification (sum_m |w_m| ||B_m||_1) is ``kappa``:
    eps (7 kappa + 8 sqrt(M)), eps of ``dtype_name`` (module docstring, 3.: at least 2.2
    times the worst measured; what is guaranteed is 1. there, given the computed
    weights)."""
    eps = float(np.finfo(np.dtype(dtype_name)).eps)
    return eps * (MDS_ERROR_FACTOR * kappa + MDS_SQRT_M_FACTOR * math.sqrt(num_devices))


def cyclic_mds_error(num_devices: int, redundancy: int, dtype_name: str) -> float:
    """Predicted worst relative gradient error of cyclic_mds + `optimal` decoding in a
    run of dtype ``dtype_name`` ('float32' or 'float64'): `decode_error_bound` of
    kappa = `cyclic_mds_condition`, the worst case over every set of <= s stragglers
    of ||g_hat - grad F|| / max_k ||grad f_k||."""
    if dtype_name not in MDS_TOLERANCE:
        fail("dtype", dtype_name, f"must be one of {', '.join(MDS_TOLERANCE)}")
    info = cyclic_mds_analysis(int(num_devices), int(redundancy))
    return decode_error_bound(info.kappa, info.num_devices, dtype_name)


def _floor_ok(info: CyclicMdsCondition, dtype_name: str) -> bool:
    """The decoder's cutoff stays 2 times below every genuine singular value (the
    computed singular values move by about eps sigma_max, the cutoff is >= 4 eps)."""
    eps = float(np.finfo(np.dtype(dtype_name)).eps)
    return info.sigma_floor >= 2.0 * svd_cutoff(eps, info.num_devices, info.num_devices)


def cyclic_mds_ok(num_devices: int, redundancy: int, dtype_name: str) -> bool:
    """Whether `check_cyclic_mds` accepts the configuration: predicted error
    (`cyclic_mds_error`) within ``MDS_TOLERANCE`` and the decoder's cutoff
    (`lstsq_rcond`) at least 2 times below the code's ``sigma_floor``."""
    err = cyclic_mds_error(num_devices, redundancy, dtype_name)
    info = cyclic_mds_analysis(int(num_devices), int(redundancy))
    return err <= MDS_TOLERANCE[dtype_name] and _floor_ok(info, dtype_name)


def check_cyclic_mds(num_devices: int, redundancy: int, dtype_name: str) -> None:
    """Refuse a cyclic MDS code that the run's dtype cannot decode exactly enough.

    Call it for allocation='cyclic_mds' with decoder='optimal', with ``dtype_name`` the
    dtype the run will use ('float64' only where jax x64 is enabled). Accepts when the
    estimated relative gradient error `cyclic_mds_error` (worst case over every set of
    <= s stragglers, relative to max_k ||grad f_k||; the calibrated estimate of the
    module docstring) is at most ``MDS_TOLERANCE`` (1e-4 in float32, 1e-10 in float64;
    about kappa <= 108 to 115 and kappa <= 6.4e4) and the decoder's cutoff
    `lstsq_rcond` is at most half the code's singular-value floor.
    Accepted in float32: s = 1 for every M <= 300 (at least); s = 2 for M <= 249 (and
    251); s = 3 for M <= 30 (and 32); s = 4 for M <= 17; s = 5 for M <= 14; s = 6 for
    M <= 13; s = 7 for M <= 12; s = 8..12 for M <= 13, 14, 13 (and 15), 14, 15
    (`_FLOAT32_MAX_DEVICES`). So M = 20: s <= 3; M = 50 and M = 100: s <= 2. In
    float64: M = 50: s <= 4; M = 100: s <= 3; M = 30: s <= 6 (and s close to M where
    few devices suffice, e.g. M = 30, s = 26..28).

    Raises:
        ConfigError: field ``dtype`` when float64 would be accepted, else field
            ``redundancy``; the message names the value, the predicted error and what
            is allowed (float64 with x64, the largest accepted redundancy, the largest
            num_devices of `_FLOAT32_MAX_DEVICES`).
    """
    m_dev, s = int(num_devices), int(redundancy)
    if cyclic_mds_ok(m_dev, s, dtype_name):
        return
    info = cyclic_mds_analysis(m_dev, s)
    tol = MDS_TOLERANCE[dtype_name]
    err = cyclic_mds_error(m_dev, s, dtype_name)
    s_ok = next(t for t in range(s - 1, -1, -1) if cyclic_mds_ok(m_dev, t, dtype_name))
    what = (
        f"allocation='cyclic_mds' with decoder='optimal' cannot decode every set of <= {s} stragglers "
        f"among num_devices={m_dev} in {dtype_name} to a relative gradient error below {tol:g} "
        f"(error amplification kappa={info.kappa:.3g}{'' if info.exhaustive else ' (upper bound)'}, "
        + (
            f"predicted error {err:.2g})"
            if err > tol
            else f"singular values down to {info.sigma_floor:.2g} of the largest, too close to the decoder's cutoff)"
        )
    )
    if dtype_name == "float32" and cyclic_mds_ok(m_dev, s, "float64"):
        remedies = [
            "use dtype='float64' with jax x64 enabled (jax.config.update('jax_enable_x64', True))",
            f"or redundancy <= {s_ok}",
        ]
        if s in _FLOAT32_MAX_DEVICES and _FLOAT32_MAX_DEVICES[s] < m_dev:
            remedies.append(f"or num_devices <= {_FLOAT32_MAX_DEVICES[s]}")
        fail("dtype", dtype_name, f"{what}: " + ", ".join(remedies))
    fail(
        "redundancy",
        s,
        f"{what}: use redundancy <= {s_ok}"
        + (
            ""
            if dtype_name == "float64"
            else f" (or float64 with jax x64 enabled: redundancy <= "
            f"{next(t for t in range(s - 1, -1, -1) if cyclic_mds_ok(m_dev, t, 'float64'))})"
        ),
    )


def validate_cyclic_mds(cfg) -> None:
    """Config-time check of a configuration that uses the cyclic MDS code: its real
    coefficients need the ``optimal`` or ``received`` decoder, and with the optimal
    decoder under stragglers the float error bound must meet its tolerance in the run's
    dtype (`check_cyclic_mds`). Without stragglers, or with ef21 (whose server decodes
    all devices), only the well-conditioned full set is ever decoded."""
    if cfg.decoder == "fixed":
        fail("decoder", cfg.decoder, "allocation='cyclic_mds' needs decoder 'optimal' or 'received'")
    if cfg.decoder == "optimal" and cfg.straggler != "none" and cfg.error_feedback != "ef21":
        check_cyclic_mds(cfg.num_devices, cfg.redundancy, float_dtype_of(cfg.dtype).name)


@register_code("cyclic_mds", validate=validate_cyclic_mds)
def cyclic_mds(num_devices: int, num_partitions: int, redundancy: int) -> np.ndarray:
    """Tandon et al. 2017's cyclic MDS code (real coefficients, K = M)."""
    if num_partitions != num_devices:
        fail(
            "num_partitions",
            num_partitions,
            f"allocation='cyclic_mds' needs num_partitions = num_devices = {num_devices}",
        )
    return cyclic_mds_matrix(num_devices, redundancy)
