"""Logistic regression for every attention head at once: the solvers behind
:func:`fasb_lens.probes.fit_head_probes`.

The objective is scikit-learn's ``LogisticRegression()`` default (``C * sum(log-loss) +
||w||^2 / 2``, the intercept unpenalised). :func:`fit_torch` minimises it for many heads at
once (bound-optimisation steps, then Newton steps for the heads still moving);
:func:`fit_sklearn` runs scikit-learn head by head, the reference.
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm


def _objective(x: Tensor, y: Tensor, theta: Tensor, C: float) -> Tensor:
    """``C * sum(log-loss) + ||w||^2 / 2`` per head (the last coordinate is the intercept)."""
    logits = torch.einsum("knd,kd->kn", x, theta)
    loss = torch.nn.functional.softplus(logits) - y * logits
    return C * loss.sum(-1) + 0.5 * (theta[:, :-1] ** 2).sum(-1)


def fit_torch(
    x: Tensor,
    y: Tensor,
    *,
    C: float,
    max_iter: int,
    chunk: int | None,
    device: str | torch.device | None,
    progress: bool,
    tol: float,
    bound_iter: int = 30,
) -> tuple[Tensor, Tensor]:
    """Every head's probe at once; returns ``(weight [k, d], bias [k])``.

    ``x`` is ``[n, k, d]`` (rows, heads, features). The log-loss's curvature never exceeds
    1/4, so ``B = C X^T X / 4 + I`` bounds every head's Hessian: steps ``B^{-1} g`` never
    increase the objective, and ``B`` is factorised once per head (the bound-optimisation
    steps of Bohning and Lindsay). Each step then costs two matrix-vector products in
    float32. Heads whose gradient, scaled by ``1 / (C n)`` as scikit-learn scales it, is
    not below ``tol`` after ``bound_iter`` steps finish with damped Newton steps in float64.
    """
    n, k, d = x.shape
    device = torch.device(device) if device is not None else x.device
    if chunk is None:  # about 1 GiB of float64 design matrices per chunk
        chunk = max(1, min(k, (1 << 30) // (8 * 3 * n * (d + 1))))
    regulariser = torch.ones(d + 1, dtype=torch.float64, device=device)
    regulariser[-1] = 0.0
    yy = y.to(device=device, dtype=torch.float64)
    weights, biases = [], []
    bar = tqdm(total=k, desc="probes", unit="head", disable=not progress)
    for start in range(0, k, chunk):
        part = x[:, start : start + chunk].to(device=device, dtype=torch.float32)
        design = torch.cat([part, torch.ones_like(part[..., :1])], dim=-1).transpose(0, 1)
        theta, active = _bound_steps(design, yy, regulariser, C, bound_iter, tol)
        if active.any():
            rows = active.nonzero().squeeze(-1)
            theta[rows] = _newton_steps(
                design[rows].double(), yy, regulariser, C, theta[rows], max_iter, tol
            )
        weights.append(theta[:, :-1].cpu())
        biases.append(theta[:, -1].cpu())
        bar.update(design.shape[0])
    bar.close()
    return torch.cat(weights), torch.cat(biases)


def _scaled_gradient(
    design: Tensor,
    y: Tensor,
    regulariser: Tensor,
    C: float,
    theta: Tensor,
    transposed: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The objective's gradient (float64) and its largest entry scaled by ``1 / (C n)``.

    ``transposed`` (``design`` as ``[k, d, n]``, contiguous) makes the first product a
    row-times-matrix one, several times faster on CPUs than matrix-times-column.
    """
    rows = theta.to(design.dtype).unsqueeze(1)
    if transposed is None:
        transposed = design.transpose(1, 2)
    logits = torch.bmm(rows, transposed).squeeze(1)
    residual = (torch.sigmoid(logits) - y.to(design.dtype)).unsqueeze(1)
    gradient = C * torch.bmm(residual, design).squeeze(1).double() + regulariser * theta
    return gradient, gradient.abs().amax(-1) / (C * design.shape[1])


def _bound_steps(
    design: Tensor, y: Tensor, regulariser: Tensor, C: float, max_iter: int, tol: float
) -> tuple[Tensor, Tensor]:
    """Bound-optimisation steps from zero; returns ``theta`` and which heads still move."""
    k, _, width = design.shape
    bound = (C / 4) * torch.bmm(design.transpose(1, 2), design).double()
    jitter = 1e-9 * torch.eye(width, dtype=torch.float64, device=design.device)
    factor = torch.linalg.cholesky(bound + torch.diag(regulariser) + jitter)
    transposed = design.transpose(1, 2).contiguous()
    theta = torch.zeros(k, width, dtype=torch.float64, device=design.device)
    active = torch.ones(k, dtype=torch.bool, device=design.device)
    for _ in range(max_iter):
        gradient, scaled = _scaled_gradient(design, y, regulariser, C, theta, transposed)
        active &= scaled > tol
        if not active.any():
            break
        step = torch.cholesky_solve(gradient.unsqueeze(-1), factor).squeeze(-1)
        theta = theta - step * active.unsqueeze(-1)
    return theta, active


def _newton_steps(
    design: Tensor,
    y: Tensor,
    regulariser: Tensor,
    C: float,
    theta: Tensor,
    max_iter: int,
    tol: float,
) -> Tensor:
    """Damped Newton from ``theta``: each step halved until the objective does not grow."""
    active = torch.ones(design.shape[0], dtype=torch.bool, device=design.device)
    for _ in range(max_iter):
        gradient, scaled = _scaled_gradient(design, y, regulariser, C, theta)
        active &= scaled > tol
        if not active.any():
            break
        p = torch.sigmoid(torch.einsum("knd,kd->kn", design, theta))
        curvature = C * p * (1 - p)
        hessian = torch.bmm((design * curvature.unsqueeze(-1)).transpose(1, 2), design)
        step = torch.linalg.solve(hessian + torch.diag(regulariser), gradient.unsqueeze(-1))
        step = step.squeeze(-1) * active.unsqueeze(-1)
        before = _objective(design, y, theta, C)
        scale = torch.ones(design.shape[0], 1, dtype=torch.float64, device=design.device)
        for _halving in range(30):
            after = _objective(design, y, theta - scale * step, C)
            worse = after > before + 1e-12 * before.abs()
            if not worse.any():
                break
            scale[worse] /= 2
        theta = theta - scale * step
    return theta


def fit_sklearn(
    x: Tensor, y: Tensor, *, C: float, max_iter: int, progress: bool
) -> tuple[Tensor, Tensor]:
    """The reference: scikit-learn's ``LogisticRegression`` head by head."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    features = x.double().numpy()
    targets = y.numpy()
    weights, biases = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for head in tqdm(
            range(x.shape[1]), desc="probes (sklearn)", unit="head", disable=not progress
        ):
            model = LogisticRegression(C=C, max_iter=max_iter).fit(features[:, head], targets)
            weights.append(torch.from_numpy(model.coef_[0]))
            biases.append(float(model.intercept_[0]))
    return torch.stack(weights), torch.tensor(biases, dtype=torch.float64)
