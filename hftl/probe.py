"""A linear probe solved, not trained: logistic regression (ridge for one output) on cached features.

A frozen backbone makes the probe a convex problem, so it is solved to convergence with a
full-batch solver instead of being trained by a few SGD steps (Kornblith et al. 2019; CLIP's probe
protocol): multinomial logistic regression by L-BFGS (torch, float64), or ridge regression in
closed form for ``text_regression``. The L2 strength is chosen over a log grid by cross-validation on
the *training* features (never the run's evaluation split), then the probe is refitted on all training
features with it: stratified 5-fold for logistic regression, as scikit-learn's ``LogisticRegressionCV``
does, and exact leave-one-out for ridge, as ``RidgeCV`` does.

The solver sees standardised features (zero mean, unit variance: the grid then means the same on
every backbone, and L-BFGS converges in few steps); the mean and scale are folded back into the
head's weight and bias, so the saved model is the library's plain model, with no extra layer.

Objective, with ``n`` training examples and strength ``l2``::

    mean cross-entropy + l2 / 2 * ||W||^2        (bias not penalised)

which is scikit-learn's ``LogisticRegression(C=1 / (l2 * n))`` on the same standardised features.

Example:
    >>> import torch
    >>> from torch import nn
    >>> head = nn.Linear(4, 2)
    >>> x, y = torch.randn(40, 4), torch.arange(40) % 2
    >>> info = solve_probe(head, x, y)
    >>> sorted(info)[:3]
    ['C', 'grid', 'l2']
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hftl.errors import ConfigError

logger = logging.getLogger(__name__)

# 13 strengths, 2/3 of a decade apart: from nearly unregularised to a head that barely moves off zero.
DEFAULT_GRID = tuple(float(v) for v in np.logspace(-6, 2, 13))
SELECTION_FOLDS = 5  # the L2 strength is chosen by k-fold cross-validation on the training features
HOLDOUT_ABOVE = 20_000  # ... or, above this many examples, on one held-out share of them:
SELECTION_FRACTION = 0.2
# L-BFGS iterations per strength (scikit-learn's LogisticRegression stops at 100). Only the weakest strengths
# on (nearly) separable features need more, and there the optimum lies at infinity anyway: 1000 iterations took
# 4.4x as long as 300 and chose the same strength with the same held-out scores (120 x 64 random features).
MAX_ITER = 300


def standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(standardised x, mean, scale); a constant feature gets scale 1 (it carries nothing, and 0 would divide)."""
    mean = x.mean(0)
    scale = x.std(0, unbiased=False)
    scale = torch.where(scale > 1e-8 * scale.max().clamp_min(1e-30), scale, torch.ones_like(scale))
    return (x - mean) / scale, mean, scale


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None,
                 max_iter: int = MAX_ITER) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS; returns (W of shape (features, classes), b).

    ``init`` warm-starts from another strength's solution (the grid is walked from strong to weak).
    SciPy's L-BFGS-B on a NumPy loss and gradient, as scikit-learn's lbfgs solver does: for probe-sized
    problems each evaluation costs microseconds, where torch's optimizer spent ~2 ms of Python per
    evaluation (a probe on 120 examples: 60 s of a 89 s run went there).
    """
    from scipy.optimize import minimize

    X = x.double().cpu().numpy()
    labels = y.cpu().numpy()
    n, d = X.shape
    Y = np.zeros((n, num_classes))
    Y[np.arange(n), labels] = 1.0
    start = np.concatenate([init[0].numpy().ravel(), init[1].numpy()]) if init else np.zeros(d * num_classes + num_classes)

    def loss_and_grad(w):
        W, b = w[: d * num_classes].reshape(d, num_classes), w[d * num_classes:]
        z = X @ W + b
        z -= z.max(1, keepdims=True)
        log_norm = np.log(np.exp(z).sum(1))
        loss = (log_norm - (z * Y).sum(1)).mean() + 0.5 * l2 * (W * W).sum()
        g = (np.exp(z - log_norm[:, None]) - Y) / n
        return loss, np.concatenate([(X.T @ g + l2 * W).ravel(), g.sum(0)])

    # Small problems: one BLAS thread. Each step is a tiny matmul; on a busy 2-core machine two threads spent
    # most of their time waiting on each other (measured: 137 s against 4.4 s for a 13-strength search).
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1 if X.size * num_classes < 2**22 else None):
        result = minimize(loss_and_grad, start, jac=True, method="L-BFGS-B",
                          options={"maxiter": max_iter, "gtol": 1e-7, "ftol": 64 * np.finfo(float).eps, "maxls": 50})
    W, b = result.x[: d * num_classes].reshape(d, num_classes), result.x[d * num_classes:]
    return torch.from_numpy(W.copy()), torch.from_numpy(b.copy())


def fit_ridge(x: torch.Tensor, y: torch.Tensor, l2s: list[float]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Ridge regression (mean squared error + l2 * ||w||^2) for each strength at once, from one SVD.

    Returns [(w of shape (features, 1), b)] in the order of ``l2s``.
    """
    x, y = x.double(), y.double()
    mean_y = y.mean()
    U, S, Vh = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    uty = U.T @ (y - mean_y)
    out = []
    for l2 in l2s:
        w = Vh.T @ (S / (S * S + len(y) * l2) * uty)
        out.append((w.unsqueeze(1), (mean_y - x.mean(0) @ w).reshape(1)))
    return out


def ridge_loo_mse(x: torch.Tensor, y: torch.Tensor, l2s: list[float]) -> list[float]:
    """Each strength's leave-one-out mean squared error, exact and in closed form (scikit-learn's ``RidgeCV``).

    Ridge with an unpenalised intercept is a linear smoother, y_hat = H y with
    H = 11'/n + U diag(S^2 / (S^2 + n l2)) U' (U S V' the SVD of the centred x), so the residual of the fit
    that left example i out is (y_i - y_hat_i) / (1 - H_ii): n fits for the price of one SVD, with no fold
    assignment to be lucky or unlucky with (5 random folds chose 0.046 or 0.22 on the same 200 weather
    examples, in two orders).
    """
    x, y = x.double(), y.double()
    n = len(y)
    U, S, _ = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    uty = U.T @ (y - y.mean())
    out = []
    for l2 in l2s:
        shrink = S * S / (S * S + n * l2)
        residual = y - y.mean() - U @ (shrink * uty)
        leverage = 1.0 / n + (U * U) @ shrink
        loo = residual / (1.0 - leverage).clamp_min(1e-12)
        out.append(float((loo * loo).mean()))
    return out


def _folds(y: torch.Tensor, seed: int) -> list[tuple[list[int], list[int]]]:
    """(fit, held-out) index pairs to choose a logistic probe's strength on: stratified k-fold, as LogisticRegressionCV.

    One 80/20 split chose badly on small data (5 labels per class: one held-out image per class decides);
    k folds average that noise away at k times the cost, which is small next to the features. Above
    ``HOLDOUT_ABOVE`` examples one stratified 20% split is already a large sample, and is used instead.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    from hftl.data import stratified_split

    n = len(y)
    if n > HOLDOUT_ABOVE:
        try:
            return [stratified_split(y.tolist(), SELECTION_FRACTION, seed)]
        except ValueError:
            pass
    folds = min(SELECTION_FOLDS, n // 2)
    counts = torch.bincount(y)
    smallest = int(counts[counts > 0].min())
    if smallest >= 2:
        splitter = StratifiedKFold(min(folds, smallest), shuffle=True, random_state=seed)
        return [(a.tolist(), b.tolist()) for a, b in splitter.split(np.zeros(n), y.numpy())]
    splitter = KFold(folds, shuffle=True, random_state=seed)  # a class with a single example: unstratified
    return [(a.tolist(), b.tolist()) for a, b in splitter.split(np.zeros(n))]


def _score(x, y, W, b) -> dict:
    logits = x.double() @ W + b
    return {"accuracy": float((logits.argmax(-1) == y).double().mean()), "loss": float(F.cross_entropy(logits, y))}


def choose_and_fit(x: torch.Tensor, y: torch.Tensor, num_outputs: int, *, regression: bool = False,
                   grid: tuple[float, ...] | list[float] = DEFAULT_GRID, seed: int = 42) -> dict:
    """Choose the L2 strength by cross-validation on (x, y), refit on all of it; x must be standardised.

    Classification: stratified k-fold. Regression: leave-one-out, exact in closed form (``ridge_loo_mse``).
    Returns {"W", "b", "l2", "selection": [per strength: its held-out scores, averaged over the folds],
    "chosen_by": how the strength was chosen, in words, or None where there was no choice}. Classification picks the
    best held-out accuracy, ties going to the lower held-out log-loss; regression the lowest mse.

    Example:
        >>> out = choose_and_fit(torch.randn(30, 3), torch.arange(30) % 3, 3)  # doctest: +SKIP
    """
    grid = sorted(float(v) for v in grid)[::-1]  # strong to weak: each solution warm-starts the next
    selection = []
    if regression and len(grid) > 1 and len(y) >= 4:  # leave-one-out: exact, one SVD at any size (as RidgeCV)
        selection = [{"l2": l2, "mse": mse} for l2, mse in zip(grid, ridge_loo_mse(x, y, grid))]
        chosen = min(selection, key=lambda s: s["mse"])["l2"]
        chosen_by = "leave-one-out cross-validation"
    elif len(grid) > 1 and len(y) >= 4:
        per_fold, splits = [], _folds(y, seed)
        chosen_by = (f"{len(splits)}-fold cross-validation" if len(splits) > 1
                     else f"one held-out {SELECTION_FRACTION:.0%} share")
        for fit_idx, held_idx in splits:
            xf, yf, xh, yh = x[fit_idx], y[fit_idx], x[held_idx], y[held_idx]
            fits, init = [], None
            for l2 in grid:
                init = fit_logistic(xf, yf, num_outputs, l2, init)
                fits.append(init)
            per_fold.append([_score(xh, yh, W, b) for W, b in fits])
        for i, l2 in enumerate(grid):  # each strength's scores, averaged over the folds
            selection.append({"l2": l2, **{k: float(np.mean([f[i][k] for f in per_fold])) for k in per_fold[0][i]}})
        chosen = max(selection, key=lambda s: (round(s["accuracy"], 9), -s["loss"]))["l2"]
    else:  # one strength given, or too few examples to hold any out
        chosen, chosen_by = grid[len(grid) // 2], None
    W, b = fit_ridge(x, y, [chosen])[0] if regression else fit_logistic(x, y, num_outputs, chosen)
    return {"W": W, "b": b, "l2": chosen, "selection": selection, "chosen_by": chosen_by}


def _linear_parts(head: nn.Module) -> tuple[nn.Linear | None, nn.Linear]:
    """(projector or None, final Linear) of a head that is one Linear, or two in a row (audio models)."""
    if isinstance(head, nn.Linear):
        return None, head
    layers = list(head.children()) if isinstance(head, nn.Sequential) else []
    if len(layers) == 2 and all(isinstance(m, nn.Linear) for m in layers):
        return layers[0], layers[1]
    raise ConfigError(f"strategy.probe_solver=lbfgs solves a linear head, but this model's head is "
                      f"{type(head).__name__}. Use strategy.probe_solver=sgd.")


@torch.no_grad()
def load_solution(head: nn.Module, weight: torch.Tensor, bias: torch.Tensor, projected: bool = False) -> None:
    """Write a solved linear map (``weight``: outputs x features) into ``head``.

    A head of two linear layers (wav2vec2/HuBERT/WavLM/Whisper's ``projector`` then ``classifier``) carries
    the map exactly: the projector's first rows become the solution and the classifier picks them out
    (identity there, zero on the other rows). The other projector rows keep their initial values, so
    fine-tuning from the probe (LP-FT) still has the whole projection width to use. ``projected``: the
    solution is for the projector's outputs (more classes than projection rows); only the classifier is set.
    """
    projector, final = _linear_parts(head)
    dtype = final.weight.dtype
    if projector is None or projected:
        final.weight.copy_(weight.to(dtype))
        final.bias.copy_(bias.to(dtype))
        return
    outputs = weight.shape[0]
    projector.weight[:outputs] = weight.to(dtype)
    projector.bias[:outputs] = bias.to(dtype)
    final.weight.zero_()
    final.weight[:, :outputs] = torch.eye(outputs, dtype=dtype)
    final.bias.zero_()


def solve_probe(head: nn.Module, features: torch.Tensor, labels: torch.Tensor, *, regression: bool = False,
                grid: tuple[float, ...] | list[float] = DEFAULT_GRID, seed: int = 42) -> dict:
    """Solve ``head`` on (features, labels) in place; returns what the card and metrics.json record.

    The returned dict holds the chosen strength ``l2``, scikit-learn's equivalent ``C`` (= 1 / (l2 * n)),
    the ``grid``, the held-out ``selection`` scores and the ``seconds`` it took.

    Example:
        >>> info = solve_probe(model.head, train_features, train_labels)  # doctest: +SKIP
        >>> info["l2"]  # doctest: +SKIP
        0.001
    """
    started = time.perf_counter()
    projector, final = _linear_parts(head)
    num_outputs = final.out_features
    # Clones: cached features come from inference mode, and autograd refuses to save inference tensors.
    features, labels = features.clone(), labels.clone()
    x = features.double()
    projected = projector is not None and projector.out_features < num_outputs
    if projected:  # more classes than projection rows: no exact factorisation; solve on the projector's outputs
        logger.info("probe: %d classes > %d projector outputs; solving the classifier on the projector's outputs",
                    num_outputs, projector.out_features)
        with torch.no_grad():
            x = x @ projector.weight.double().T + projector.bias.double()
    xs, mean, scale = standardise(x)
    y = labels.double() if regression else labels.long()
    out = choose_and_fit(xs, y, num_outputs, regression=regression, grid=grid, seed=seed)
    W = out["W"] / scale[:, None]  # logits = ((x - mean) / scale) W + b = x (W / scale) + (b - mean (W / scale))
    b = out["b"] - mean @ W
    load_solution(head, W.T, b, projected)
    n = len(y)  # scikit-learn's equivalents: Ridge(alpha=l2 * n), LogisticRegression(C=1 / (l2 * n))
    info = {"solver": "ridge" if regression else "lbfgs", "l2": out["l2"],
            **({"alpha": out["l2"] * n} if regression else {"C": 1.0 / (out["l2"] * n)}),
            "grid": sorted(grid), "selection": out["selection"], "chosen_by": out["chosen_by"],
            "seconds": round(time.perf_counter() - started, 3)}
    logger.info("probe solved in %.2f s: l2 %.3g chosen by %s on %d training examples",
                info["seconds"], info["l2"], out["chosen_by"] or "no search", len(y))
    return info
