"""Multinomial logistic-regression probes, fitted in torch as one batched problem.

A probe standardizes features with its training data's mean and std, then minimises
sklearn's objective  sum_i CE_i + ||W||² / (2C)  (divided by n; the bias is not penalised).
C comes from k-fold cross-validation over training groups: the C with the lowest pooled
held-out cross-entropy wins (ties: the smaller, stronger C). Cross-entropy rather than
accuracy chooses C because it is smooth and, without signal, favours the prior (strongest C).

Speed: every model a cell needs (each fold × each C, plus the refit on all training data for
each C, for one or several label vectors over the same X) is one slice of a stacked weight
tensor [folds+1, label sets, C's, d, k]; one batched L-BFGS (own history and Armijo step per
model) solves them together, so each iteration is one batched [n, d] × [d, label sets·C's·k]
product per fold (and its transpose for the gradient), computed only for models not yet
converged. Refitting for every C removes a second, sequential solve. Memory: two fp32 copies
of X per fit (folds + 1), e.g. 55 MB for 2000 × 576 with 5 folds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from introspect_mi.errors import UserError
from probes.config import ProbeConfig
from probes.metrics import as_labels
from probes.splits import group_folds

LOG_EPS = float(np.log(1e-15))  # floor of a held-out log-probability (a class unseen in the fold)


@dataclass(frozen=True)
class Probe:
    """A fitted probe: logits = ((x - mean) / scale) @ coef + intercept over `classes`."""

    classes: np.ndarray
    """Class labels (strings, sorted); column j of predict_proba is classes[j]."""
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    """[d, k] weights on standardized features."""
    intercept: np.ndarray
    C: float
    """The inverse L2 strength cross-validation chose."""
    c_grid: tuple[float, ...]
    cv_loss: np.ndarray
    """Pooled held-out cross-entropy per C of `c_grid` (NaN when no folds ran: one C, not asked for)."""
    converged: bool
    """Whether the final fit met the gradient tolerance within max_iter."""

    def logits(self, X: np.ndarray | torch.Tensor) -> np.ndarray:
        x = _as_matrix(X).numpy()
        return ((x - self.mean) / self.scale) @ self.coef + self.intercept

    def predict_proba(self, X: np.ndarray | torch.Tensor) -> np.ndarray:
        z = self.logits(X).astype(np.float64)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.classes[self.logits(X).argmax(axis=1)]


def fit_probe(X: np.ndarray | torch.Tensor, y: Sequence, cfg: ProbeConfig,
              groups: Sequence | None = None) -> Probe:
    """Fit one probe; `groups` (e.g. item ids) keep a group's vectors in one CV fold."""
    return fit_probes(X, [y], cfg, groups)[0]


def fit_probes(X: np.ndarray | torch.Tensor, ys: Sequence[Sequence], cfg: ProbeConfig,
               groups: Sequence | None = None, cross_validate: bool = False) -> list[Probe]:
    """Fit one probe per label vector in `ys`, all over the same X and CV folds, in one solve.

    The folds run when the grid has several C's, or when `cross_validate` asks for each probe's
    held-out loss (`cv_loss`) with one C: a score of the training data alone (nested layer choice)."""
    x = _as_matrix(X)
    n, d = x.shape
    labels = [as_labels(y) for y in ys]
    if not labels or any(lab.size != n for lab in labels):
        raise ValueError(f"need label vectors of length {n} (one per row of X)")
    c_grid = tuple(sorted(cfg.c_grid))
    cross_validate = cross_validate or len(c_grid) > 1
    train = _fold_train_masks(n, groups, cfg) if cross_validate else torch.ones(1, n, dtype=torch.bool)
    classes = [np.unique(lab) for lab in labels]
    codes = torch.as_tensor(np.stack([np.searchsorted(c, lab) for c, lab in zip(classes, labels)]))
    problem = _Problem(x, train, codes, max(map(len, classes)), torch.tensor(c_grid, dtype=torch.float64))
    theta, converged = _lbfgs(problem.value_and_grad, torch.zeros(problem.n_models, problem.dim), cfg.max_iter, cfg.tol)
    cv_loss = problem.cv_loss(theta).numpy() if cross_validate else np.full((len(labels), 1), np.nan)
    probes = []
    for lab_set, cls in enumerate(classes):
        best = int(np.argmin(cv_loss[lab_set])) if len(c_grid) > 1 else 0
        coef, intercept = problem.weights(theta, lab_set, best)
        probes.append(Probe(
            classes=cls, mean=problem.mean[-1].numpy(), scale=problem.scale[-1].numpy(),
            coef=coef[:, :len(cls)].numpy(), intercept=intercept[:len(cls)].numpy(),
            C=c_grid[best], c_grid=c_grid, cv_loss=cv_loss[lab_set],
            converged=bool(problem.model_view(converged)[-1, lab_set, best])))
    return probes


def _as_matrix(X: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(X).detach().to("cpu", torch.float32)
    if x.ndim != 2:
        raise ValueError(f"X must be [n_vectors, d_model], got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise UserError("activations contain NaN or inf", "recapture in fp32 (fp16 overflows on large residual norms)")
    return x


def _fold_train_masks(n: int, groups: Sequence | None, cfg: ProbeConfig) -> torch.Tensor:
    """[folds + 1, n] training rows: fold f trains on every other fold; the last row is all rows."""
    fold = torch.as_tensor(group_folds(np.arange(n) if groups is None else groups, cfg.folds, cfg.seed))
    if fold.numel() != n:
        raise ValueError(f"{fold.numel()} groups for {n} vectors")
    return torch.cat([fold[None] != torch.arange(int(fold.max()) + 1)[:, None], torch.ones(1, n, dtype=torch.bool)])


class _Problem:
    """The stacked objective over models (fit m, label set l, C j); fit -1 is the refit.

    A "column" is one (label set, C) pair across all fits. Logits are laid out
    [fit, row, class, column] so class reductions run over contiguous columns, and only the
    columns with an unconverged model are computed. The gradient is written out
    (softmax − one-hot): several times faster than autograd through log_softmax over few classes.
    """

    def __init__(self, x: torch.Tensor, train: torch.Tensor, codes: torch.Tensor, k: int,
                 c_grid: torch.Tensor) -> None:
        x64, w = x.double(), train.double()
        n_fit = w.sum(1)  # [M]
        mean = (w @ x64) / n_fit[:, None]
        std = ((w @ x64.square()) / n_fit[:, None] - mean.square()).clamp_min(0).sqrt()
        scale = torch.where(std > 1e-6 * mean.abs().clamp_min(1.0), std, torch.ones_like(std))
        self.mean, self.scale = mean.float(), scale.float()
        self.xs = (x[None] - self.mean[:, None]) / self.scale[:, None]  # [M, n, d] per-fit standardized
        self.xs_t = self.xs.transpose(1, 2).contiguous()  # a transposed view makes bmm 2-3× slower
        M, n, L, J = train.shape[0], x.shape[0], codes.shape[0], c_grid.numel()
        self.shape, self.d, self.k = (M, L, J), x.shape[1], k
        self.n_models, self.dim = M * L * J, (self.d + 1) * k
        self.train = train[:, :, None, None]  # [M, n, 1, 1]
        self.weight = (w / n_fit[:, None]).float()[:, :, None, None]  # each fit's mean over its rows
        self.n_fit = n_fit[:, None]
        self.c = c_grid.repeat(L)  # per column (label set major)
        self.label = codes.T[None, :, None, :, None].expand(M, n, 1, L, J).reshape(M, n, 1, L * J)
        present = (train[:, None, :, None] & torch.nn.functional.one_hot(codes, k).bool()[None]).any(2)  # [M, L, k]
        self.absent = None if present.all() else torch.where(present, 0.0, float("-inf")).transpose(1, 2)[
            :, None, :, :, None].expand(M, 1, k, L, J).reshape(M, 1, k, L * J)

    def model_view(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(*self.shape, *t.shape[1:])

    def weights(self, theta: torch.Tensor, lab_set: int, c_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(W [d, k], b [k]) of the refit on all training rows."""
        t = self.model_view(theta)[-1, lab_set, c_index]
        return t[:self.d * self.k].view(self.d, self.k), t[self.d * self.k:]

    def _logits(self, W: torch.Tensor, b: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """[M, n, k, A] logits of A columns (−inf for a class absent from a fit's training rows)."""
        M, A = W.shape[:2]
        z = torch.bmm(self.xs, W.permute(0, 2, 3, 1).reshape(M, self.d, self.k * A)).view(M, -1, self.k, A)
        z = z + b.transpose(1, 2)[:, None]
        return z if self.absent is None else z + self.absent[..., cols]

    def _columns(self, theta: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = theta.view(self.shape[0], -1, self.dim)[:, cols]
        return t[..., :self.d * self.k].unflatten(-1, (self.d, self.k)), t[..., self.d * self.k:]

    def value_and_grad(self, theta: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Objective [B] (float64) and gradient [B, D] of the columns holding `rows` (others: inf, 0)."""
        M = self.shape[0]
        cols = rows.view(M, -1).any(0).nonzero().squeeze(1)
        W, b = self._columns(theta, cols)
        z = self._logits(W, b, cols)
        z = z - z.amax(2, keepdim=True)
        e = z.exp()
        total = e.sum(2, keepdim=True)
        label = self.label[..., cols]
        logp = z.gather(2, label) - total.log()  # [M, n, 1, A]
        data = torch.where(self.train, -logp, 0.0).double().sum((1, 2))
        reg = W.square().sum((-1, -2)).double() / (2 * self.c[cols])
        dz = (e / total).scatter_add_(2, label, torch.full_like(logp, -1.0)).mul_(self.weight)
        gW = torch.bmm(self.xs_t, dz.view(M, -1, self.k * cols.numel())).view(M, self.d, self.k, -1).permute(0, 3, 1, 2)
        gW = gW + W / (self.c[cols][:, None, None] * self.n_fit[..., None, None]).float()
        f = torch.full((M, self.c.numel()), float("inf"), dtype=torch.float64)
        f[:, cols] = (data + reg) / self.n_fit
        g = torch.zeros(M, self.c.numel(), self.dim)
        g[:, cols] = torch.cat([gW.flatten(-2), dz.sum(1).transpose(1, 2)], -1)
        return f.view(-1), g.view(self.n_models, self.dim)

    @torch.no_grad()
    def cv_loss(self, theta: torch.Tensor) -> torch.Tensor:
        """[L, J] pooled held-out cross-entropy over the CV folds (every row is held out once)."""
        cols = torch.arange(self.c.numel())
        z = self._logits(*self._columns(theta, cols), cols)[:-1]
        logp = (z.gather(2, self.label[:-1]) - z.logsumexp(2, keepdim=True)).clamp_min(LOG_EPS)
        held_out = torch.where(self.train[:-1], 0.0, -logp).double().sum((0, 1, 2))
        return held_out.view(self.shape[1:]) / self.train.shape[1]


Fun = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _lbfgs(fun: Fun, theta: torch.Tensor, max_iter: int, tol: float, history: int = 10,
           max_halvings: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise B independent objectives at once; `fun(theta [B, D], rows [B]) -> (f [B], grad [B, D])`
    needs to be right only on `rows` (the rows still being solved).

    Each row keeps its own curvature pairs and Armijo backtracking step, so the rows converge as
    if solved one by one. Returns (theta, converged [B]: max |grad| < tol).
    """
    f, g = fun(theta, torch.ones(theta.shape[0], dtype=torch.bool))
    S: list[torch.Tensor] = []
    Y: list[torch.Tensor] = []
    rho: list[torch.Tensor] = []
    active = g.abs().amax(1) >= tol
    for _ in range(max_iter):
        if not active.any():
            break
        p = -_two_loop(g, S, Y, rho) if S else -g / g.abs().sum(1, keepdim=True).clamp_min(1.0)
        p[~active] = 0
        slope = (g * p).sum(1).double()
        uphill = active & (slope >= 0)  # only by round-off: restart those rows on steepest descent
        p[uphill], slope[uphill] = -g[uphill], -(g[uphill].double().square().sum(1))
        step = torch.ones_like(slope)
        pending = active.clone()
        new_theta, new_f, new_g = theta.clone(), f.clone(), g.clone()
        for _ in range(max_halvings):
            trial = theta + step.float()[:, None] * p
            ft, gt = fun(trial, pending)
            ok = pending & (ft <= f + 1e-4 * step * slope)
            new_theta[ok], new_f[ok], new_g[ok] = trial[ok], ft[ok], gt[ok]
            pending &= ~ok
            if not pending.any():
                break
            step = torch.where(pending, step / 2, step)
        s, y = new_theta - theta, new_g - g
        sy = (s * y).sum(1)
        S, Y = (S + [s])[-history:], (Y + [y])[-history:]
        rho = (rho + [torch.where(sy > 1e-10, 1 / sy, torch.zeros_like(sy))])[-history:]
        theta, f, g = new_theta, new_f, new_g
        active &= ~pending & (g.abs().amax(1) >= tol)  # pending: no step decreased f (stalled)
    return theta, g.abs().amax(1) < tol


def _two_loop(g: torch.Tensor, S: list[torch.Tensor], Y: list[torch.Tensor], rho: list[torch.Tensor]) -> torch.Tensor:
    """Row-wise L-BFGS product H·g from the stored pairs (a pair with rho 0 is skipped)."""
    q = g.clone()
    alphas = []
    for s, y, r in zip(reversed(S), reversed(Y), reversed(rho)):
        a = r * (s * q).sum(1)
        q -= a[:, None] * y
        alphas.append(a)
    s, y, r = S[-1], Y[-1], rho[-1]
    gamma = torch.where(r > 0, (s * y).sum(1) / y.square().sum(1).clamp_min(1e-30), torch.ones_like(r))
    q *= gamma[:, None]
    for s, y, r, a in zip(S, Y, rho, reversed(alphas)):
        b = r * (y * q).sum(1)
        q += (a - b)[:, None] * s
    return q
