"""How one ODE solve is carried out: torchdiffeq's method names, tolerances and fixed steps."""

from __future__ import annotations

from dataclasses import dataclass

SOLVER_METHODS = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "rk4", "midpoint", "euler")
FIXED_STEP = ("rk4", "midpoint", "euler")


class SolverError(RuntimeError):
    """A solve that ran past its step limit or produced non-finite values."""


@dataclass
class SolverSettings:
    """How one ODE solve is carried out (torchdiffeq names).

    ``step_size`` is used by fixed-step methods (``rk4``, ``midpoint``, ``euler``); ``max_nfe`` caps
    the function evaluations of one forward solve so that a runaway solve raises instead of hanging.
    """

    method: str = "dopri5"
    atol: float = 1e-5
    rtol: float = 1e-5
    step_size: float | None = None
    adjoint: bool = False
    max_nfe: int = 20_000

    def __post_init__(self):
        if self.method not in SOLVER_METHODS:
            raise ValueError(f"unknown solver {self.method!r}; valid: {', '.join(SOLVER_METHODS)}")
        if self.method in FIXED_STEP and not (self.step_size and self.step_size > 0):
            raise ValueError(f"solver {self.method!r} needs a positive step_size")
        if self.atol <= 0 or self.rtol <= 0:
            raise ValueError("atol and rtol must be positive")

    def odeint_kwargs(self):
        kw = dict(method=self.method, atol=self.atol, rtol=self.rtol)
        if self.method in FIXED_STEP:
            kw["options"] = dict(step_size=self.step_size)
        return kw


def settings(s, defaults) -> SolverSettings:
    return s if isinstance(s, SolverSettings) else SolverSettings(**{**defaults, **(s or {})})
