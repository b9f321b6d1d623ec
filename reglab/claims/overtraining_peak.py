"""Overtraining in linear regression peaks when the number of samples equals the number of parameters.

Advani, Saxe & Sompolinsky ("High-dimensional dynamics of generalization error
in neural networks", Neural Networks 2020). A linear student w ∈ R^p trained by
gradient descent on n noisy examples of a linear teacher evolves, in the
eigenbasis of the sample covariance C = XᵀX/n (Marchenko–Pastur for
α = n/p), mode by mode: w_k(t) = (b_k/λ_k)(1 − e^{−λ_k t}) from zero init,
b = Xᵀy/n; the noise part of mode k grows like (σ_ε²/(nλ_k))(1 − e^{−λ_k t})²,
so the smallest eigenvalues — which approach 0 as α → 1 — blow up the error
late in training. The paper predicts that the test error after long training,
and the overtraining gap (final minus best-over-time test error), peak at
α ≈ 1, while early stopping removes most of the peak.

Setup (SNR = 5, GD to convergence): x ~ N(0, I_p), teacher
w̄ ~ N(0, I_p/p) (signal variance 1), y = w̄ᵀx + ε with σ_ε² = 0.2;
p = 100 (quick) or 200 (full), n/p ∈ {0.3, 0.4, …, 3.0} (15 values, n = p
included), 40 (quick) or 150 (full) draws of (w̄, X, ε) per n. Gradient flow
(GD with a vanishing step; time t in units of 1/η) from w = 0, solved exactly
through the eigendecomposition of C; the test error is exact,
E_g(t) = ‖w(t) − w̄‖² + σ_ε². Times: t = 0 and 241 log-spaced points in
[1e-2, 1e4]; "final" is E_g at T = 1e4 (long training) and, separately, at
t = ∞ (convergence: the minimum-norm least-squares solution). The result
lists beside the latter its p → ∞ limit as a sanity reference:
(1 − α)σ_w² + σ_ε² α/(1 − α) + σ_ε² for α < 1, σ_ε² α/(α − 1) for α > 1.
At each n the curves are averaged over draws, then: E_final = mean E_g(T),
E_opt = min_t of the mean curve (oracle early stopping, one stopping time per
n), gap = E_final − E_opt.

Prediction checked (the criterion, fixed before running): (i) the n/p that
maximises the gap lies in [0.8, 1.25], both at T = 1e4 and at t = ∞; (ii) the
n/p that maximises E_final lies in [0.8, 1.25], both at T = 1e4 and at t = ∞;
(iii) early stopping removes most of the peak: at T = 1e4 the peak's
prominence over the largest-α point, E(α*) − E(α_max) with α* the argmax of
E_final, is at least halved — E_opt(α*) − E_opt(α_max) ≤ 0.5 (E_final(α*) −
E_final(α_max)).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reglab.claims.base import REGISTRY, Claim

SIGNAL_VAR = 1.0
NOISE_VAR = 0.2  # SNR = 5
ALPHAS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0]
T_LONG = 1e4
TIMES = np.concatenate([[0.0], np.logspace(-2, np.log10(T_LONG), 241)])
WINDOW = (0.8, 1.25)


def gradient_flow_test_error(
    x: np.ndarray, y: np.ndarray, w_bar: np.ndarray, noise_var: float, times: np.ndarray
) -> tuple[np.ndarray, float]:
    """Exact test error of gradient flow from w = 0 on L = (1/2n)‖Xw − y‖², for x ~ N(0, I).

    Returns ``(E_g(times), E_g(∞))`` with E_g = ‖w(t) − w̄‖² + noise_var. In the
    eigenbasis of C = XᵀX/n, w_k(t) = (b_k/λ_k)(1 − e^{−λ_k t}) with b = Xᵀy/n;
    null-space modes (λ_k = 0, when n < p) stay at their initial value 0.
    """
    n = x.shape[0]
    lam, q = np.linalg.eigh(x.T @ x / n)
    b = q.T @ (x.T @ y / n)
    target = q.T @ w_bar
    live = lam > 1e-10 * lam.max()
    w_inf = np.where(live, b / np.where(live, lam, 1.0), 0.0)
    growth = -np.expm1(-np.outer(times, np.where(live, lam, 0.0)))  # 1 − e^{−λt}, shape (times, p)
    w_t = growth * w_inf
    errors = ((w_t - target) ** 2).sum(1) + noise_var
    return errors, float(((w_inf - target) ** 2).sum() + noise_var)


def learning_curves(p: int, alphas: list[float], draws: int, seed: int) -> list[dict[str, Any]]:
    """Mean test-error curves over ``draws`` teachers and datasets for each n = round(α p)."""
    rng = np.random.default_rng(seed)
    rows = []
    for alpha in alphas:
        n = round(alpha * p)
        curves, finals_inf = [], []
        for _ in range(draws):
            w_bar = rng.normal(0.0, np.sqrt(SIGNAL_VAR / p), p)
            x = rng.normal(size=(n, p))
            y = x @ w_bar + rng.normal(0.0, np.sqrt(NOISE_VAR), n)
            e_t, e_inf = gradient_flow_test_error(x, y, w_bar, NOISE_VAR, TIMES)
            curves.append(e_t)
            finals_inf.append(e_inf)
        mean = np.mean(curves, 0)
        best = int(np.argmin(mean))
        e_final, e_inf = float(mean[-1]), float(np.mean(finals_inf))
        e_opt_inf = min(float(mean.min()), e_inf)
        rows.append(
            {
                "alpha": n / p,
                "n": n,
                "e_final": e_final,
                "e_opt": float(mean[best]),
                "t_opt": float(TIMES[best]),
                "gap": e_final - float(mean[best]),
                "e_converged": e_inf,
                "e_converged_median": float(np.median(finals_inf)),
                "e_converged_limit": converged_error_limit(n / p),
                "gap_converged": e_inf - e_opt_inf,
            }
        )
    return rows


def converged_error_limit(alpha: float, signal_var: float = SIGNAL_VAR, noise_var: float = NOISE_VAR) -> float | None:
    """The p → ∞ test error of the minimum-norm least-squares solution (gradient flow from 0 at t = ∞).

    (1 − α) σ_w² + σ_ε² α/(1 − α) + σ_ε² for α < 1, σ_ε² α/(α − 1) for α > 1, divergent (None) at α = 1.
    """
    if alpha < 1:
        return (1 - alpha) * signal_var + noise_var * alpha / (1 - alpha) + noise_var
    if alpha > 1:
        return noise_var * alpha / (alpha - 1)
    return None


def _argmax_alpha(rows: list[dict[str, Any]], key: str) -> float:
    return max(rows, key=lambda r: r[key])["alpha"]


@REGISTRY.register("overtraining_peak")
class OvertrainingPeak(Claim):
    """Linear regression by GD: overtraining and final test error peak at n ≈ p; early stopping removes the peak."""

    paper = "High-dimensional dynamics of generalization error in neural networks (Advani, Saxe & Sompolinsky, 2020)"
    prediction = (
        "For a linear student trained by gradient descent on noisy teacher data, the overtraining gap "
        "(final minus early-stopped test error) and the final test error are largest at n/p in [0.8, 1.25], "
        "and early stopping at least halves the peak's prominence."
    )

    def run(self, quick: bool = False, seed: int = 0) -> dict[str, Any]:
        p, draws = (100, 40) if quick else (200, 150)
        rows = learning_curves(p, ALPHAS, draws, seed)
        star = max(rows, key=lambda r: r["e_final"])
        last = max(rows, key=lambda r: r["alpha"])
        return {
            "p": p,
            "draws": draws,
            "noise_var": NOISE_VAR,
            "t_long": T_LONG,
            "argmax_gap_alpha": _argmax_alpha(rows, "gap"),
            "argmax_final_alpha": _argmax_alpha(rows, "e_final"),
            "argmax_gap_converged_alpha": _argmax_alpha(rows, "gap_converged"),
            "argmax_final_converged_alpha": _argmax_alpha(rows, "e_converged"),
            "peak_gap": max(r["gap"] for r in rows),
            "peak_final": star["e_final"],
            "peak_prominence_final": star["e_final"] - last["e_final"],
            "peak_prominence_early_stopped": star["e_opt"] - last["e_opt"],
            "max_early_stopped": max(r["e_opt"] for r in rows),
            "curve": rows,
        }

    def check(self, result: dict[str, Any]) -> bool:
        lo, hi = WINDOW
        in_window = all(
            lo <= result[key] <= hi
            for key in (
                "argmax_gap_alpha",
                "argmax_final_alpha",
                "argmax_gap_converged_alpha",
                "argmax_final_converged_alpha",
            )
        )
        return in_window and result["peak_prominence_early_stopped"] <= 0.5 * result["peak_prominence_final"]
