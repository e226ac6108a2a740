"""Settings of a probe fit (field docstrings are the --help texts of the probing experiment)."""

from __future__ import annotations

from dataclasses import dataclass

from introspect_mi.errors import UserError


@dataclass(frozen=True)
class ProbeConfig:
    c_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    """Inverse L2 strengths tried by cross-validation (sklearn's convention on standardized features: summed cross-entropy + ||W||²/(2C)); smaller is stronger."""
    folds: int = 5
    """Inner cross-validation folds over the training groups (items): for choosing C, and for the probing experiment's nested layer choice."""
    max_iter: int = 100
    """L-BFGS iterations at most per fit."""
    tol: float = 1e-4
    """A fit has converged when every gradient entry of its mean loss is below this."""
    n_boot: int = 1000
    """Bootstrap resamples for accuracy confidence intervals."""
    seed: int = 0
    """Seed for CV folds, the shuffled-label and control-task labels and the bootstrap."""

    def __post_init__(self) -> None:
        if not self.c_grid or any(not c > 0 for c in self.c_grid):
            raise UserError(f"c_grid {self.c_grid} must be non-empty positive numbers", "e.g. --c-grid 0.001 0.01 0.1 1")
        if self.folds < 2:
            raise UserError(f"folds={self.folds} cannot cross-validate", "use --folds 2 or more")
        if self.max_iter < 1 or not self.tol > 0 or self.n_boot < 1:
            raise UserError("max_iter, tol and n_boot must be positive", "fix --max-iter, --tol or --n-boot")
