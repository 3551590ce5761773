"""Stacking: a trained flow mixed with kernel density estimates of its training split, the weights fitted on
the validation split.

Stacked density estimation (Smyth & Wolpert 1999, "Linearly combining density estimators via stacking")
combines fixed, normalized densities ``p_j`` into ``p = sum_j w_j p_j`` with weights on the simplex chosen
by the likelihood of held-out points; the mixture is again an exact, normalized density. Here the parts are

- the trained flow ``p_flow`` (its best validation weights, scored with its evaluation solver);
- the von Mises-Fisher KDE of the training split at each concentration of a ladder (:func:`stack_kappas`:
  from :data:`MAX_KAPPA` down by factors of :data:`RATIO` to :data:`MIN_KAPPA`), each concentration its own
  part (:meth:`manifolds.distributions.MultiscaleKDE.kernel_log_probs`);
- the uniform law on the sphere (which bounds ``-log p`` far from everything),

and the weights maximize the validation likelihood (concave in the weights: EM converges to the optimum,
:func:`mixture_weights`). The test split is scored once, with the fitted weights. ``main_density.py
--stack`` does this at the end of an Earth run (``metrics.json``'s ``stack``; on by default at ``--budget
long``); ``scripts.earth`` scores, integrates and maps the stacked density. At other points ``x`` of a run
in ``RUN``::

    from data.earth import EarthData
    from flows import model_log_prob, solve_copy
    from scripts.earth_maps import best_model
    stack = Stack.from_record(EarthData(dataset, None, split).train, metrics["stack"])
    log_p = stack.log_prob(model_log_prob(solve_copy(best_model(RUN)), x), x)

Why the ladder stops at :data:`MAX_KAPPA` (kernels of 19 km and broader): the catalogues repeat
coordinates across splits, so kernels of a few km earn unbounded likelihood at repeated events only
(docs/earth_kde.md); the validation likelihood would put weight on them, and the density on the 85% of
earthquake test events that repeat no training coordinate got worse (docs/earth_mix_kde.md). The test NLL
over those novel events is reported beside the stacked one (``scripts.earth``).
"""

from __future__ import annotations

import math

import torch

#: The sharpest kernel of the ladder: concentration 1.1e5, an angular scale 1/sqrt(kappa) of 19 km on the Earth.
MAX_KAPPA = 1.1e5
#: The ladder's step; chosen on the validation events (two-fold cross-fitting within them, ten random halvings,
#: splits 0-4 of flood and earthquake; docs/earth_ablation.md, "Stacking"): ratios 2^(1/4) ... 8 from the same
#: sharpest kernel agree within 0.003 nats; 2 keeps the ladder short (14 kernels).
RATIO = 2.0
#: The broadest kernel at least this concentration (10: 2000 km, the flow's own broadest base kernel).
MIN_KAPPA = 10.0


def stack_kappas(
    max_kappa: float = MAX_KAPPA, ratio: float = RATIO, min_kappa: float = MIN_KAPPA
) -> list[float]:
    """The ladder of concentrations, broadest first: ``max_kappa / ratio^i`` down to ``min_kappa``."""
    if not (max_kappa >= min_kappa > 0 and ratio > 1):
        raise ValueError(
            f"a ladder needs max_kappa >= min_kappa > 0 and ratio > 1, got {max_kappa}, {min_kappa}, {ratio}"
        )
    n = int(math.floor(math.log(max_kappa / min_kappa) / math.log(ratio) + 1e-9))
    return [max_kappa / ratio**i for i in range(n, -1, -1)]


def mixture_weights(log_probs, max_iter: int = 5000, tol: float = 1e-10) -> torch.Tensor:
    """The mixture weights on the simplex that maximize ``mean_i log sum_j w_j p_j(x_i)``, by EM.

    ``log_probs``: ``(N, m)``, the log-density of part ``j`` at point ``i``. The objective is concave in
    ``w``, and EM's multiplicative update never decreases it; it stops when the mean log-likelihood gains
    less than ``tol``. Returns ``(m,)`` float64 weights summing to 1 (a part no point needs goes to 0).
    """
    L = torch.as_tensor(log_probs, dtype=torch.float64)
    if L.dim() != 2 or L.shape[0] == 0 or L.shape[1] == 0:
        raise ValueError(
            f"mixture_weights needs log-densities of shape (N, m) with N, m >= 1, got {tuple(L.shape)}"
        )
    if not torch.isfinite(L.max(1).values).all():
        raise ValueError("mixture_weights: a point where no part has a finite log-density")
    n, m = L.shape
    log_w = torch.full((m,), -math.log(m), dtype=torch.float64)
    last = -math.inf
    for _ in range(max_iter):
        joint = L + log_w
        total = joint.logsumexp(1, keepdim=True)
        ll = float(total.mean())
        if ll - last < tol:
            break
        last = ll
        log_w = (joint - total).logsumexp(0) - math.log(n)  # the mean responsibility of each part
    return log_w.exp() / log_w.exp().sum()


class Stack:
    """``p = w_flow p_flow + sum_k w_k KDE_kappa_k + w_u uniform``: the stacked density of one Earth run.

    The flow is not held here: :meth:`log_prob` takes the flow's log-density at the points (from the run's
    scoring solve, or any solve of the same model), so the map, the integral and the score all use the
    same function of it. ``centers``: the training split; ``kappas``: the ladder; ``weights``: ``(flow,
    kernels..., uniform)``.
    """

    def __init__(self, centers, kappas, weights=None):
        from manifolds.distributions import MultiscaleKDE

        self.kappas = [float(k) for k in kappas]
        # eps is unused: kernel_log_probs has no uniform part (the stack has its own)
        self.kde = MultiscaleKDE(centers, self.kappas, eps=0.5)
        self.weights = None  # not fitted yet: parts() works, log_prob() and sample() need weights
        if weights is not None:
            self.set_weights(weights)

    def set_weights(self, weights):
        w = torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (len(self.kappas) + 2,) or (w < 0).any() or not torch.isfinite(w).all():
            raise ValueError(f"a stack of {len(self.kappas)} kernels needs {len(self.kappas) + 2} finite weights "
                             f">= 0 (flow, kernels, uniform), got {w.tolist()}")  # fmt: skip
        if abs(float(w.sum()) - 1) > 1e-9:
            raise ValueError(f"the weights of a stack must sum to 1, got {float(w.sum())}")
        self.weights = w

    def _fitted(self):
        if self.weights is None:
            raise ValueError("this stack has no weights yet (Stack.fit or set_weights)")

    def parts(self, lp_flow, x) -> torch.Tensor:
        """``(N, m + 2)``: the log-density of each part at ``x`` (the flow's given as ``lp_flow``)."""
        lp_flow = torch.as_tensor(lp_flow, dtype=torch.float64).reshape(-1, 1)
        kernels = self.kde.kernel_log_probs(x)
        uniform = torch.full_like(lp_flow, -math.log(4 * math.pi))
        return torch.cat([lp_flow.to(kernels.device), kernels, uniform.to(kernels.device)], 1)

    def log_prob(self, lp_flow, x) -> torch.Tensor:
        """The stacked log-density at ``x`` (float64), from the flow's log-density there."""
        self._fitted()
        parts = self.parts(lp_flow, x)
        with torch.no_grad():
            log_w = self.weights.to(parts.device).log()  # -inf for a part of weight 0: it drops out
        return torch.logsumexp(parts + log_w, 1)

    @classmethod
    def fit(cls, centers, lp_flow_val, x_val, kappas=None) -> Stack:
        """The weights of the validation events' best mixture (:func:`mixture_weights`)."""
        s = cls(centers, stack_kappas() if kappas is None else kappas)
        s.set_weights(mixture_weights(s.parts(lp_flow_val, x_val)))
        return s

    def sample(self, flow_sample, n: int, generator=None) -> torch.Tensor:
        """``n`` draws (float64, ``(n, 3)``): ``flow_sample(k)`` gives the flow's ``k``, the rest are drawn by
        part (a kernel at a uniformly drawn centre, or the uniform law)."""
        from manifolds.distributions import vmf_s2_around

        self._fitted()
        part = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        out = torch.empty(n, 3, dtype=torch.float64)
        is_flow, is_unif = part == 0, part == len(self.kappas) + 1
        if is_flow.any():
            out[is_flow] = flow_sample(int(is_flow.sum())).double().cpu()
        if is_unif.any():
            out[is_unif] = self.kde.manifold.random(
                int(is_unif.sum()), generator=generator, dtype=torch.float64
            )
        kern = ~is_flow & ~is_unif
        if kern.any():
            k = torch.tensor(self.kappas, dtype=torch.float64)[part[kern] - 1]
            idx = torch.randint(0, len(self.kde.centers), (int(kern.sum()),), generator=generator)
            out[kern] = vmf_s2_around(self.kde.centers[idx], k, generator)
        return out

    def record(self) -> dict:
        """The stack as plain numbers (metrics.json): the ladder and the weights by part."""
        self._fitted()
        w = self.weights.tolist()
        return {
            "kappas": self.kappas,
            "weight_flow": w[0],
            "weight_kernels": w[1:-1],
            "weight_uniform": w[-1],
        }

    @classmethod
    def from_record(cls, centers, rec: dict) -> Stack:
        """The stack of :meth:`record` on the same training split (``ValueError`` for anything else)."""
        try:
            kappas = [float(k) for k in rec["kappas"]]
            weights = [
                float(rec["weight_flow"]),
                *map(float, rec["weight_kernels"]),
                float(rec["weight_uniform"]),
            ]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a stack record (metrics.json's stack): {type(e).__name__} {e}") from None
        if not kappas or min(kappas) <= 0 or not all(math.isfinite(k) for k in kappas):
            raise ValueError(f"not a stack record: concentrations {kappas}")
        return cls(centers, kappas, weights)
