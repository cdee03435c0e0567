"""Metrics and losses of the evaluation protocols (paper §4.3), as pure functions."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """[true, predicted] counts."""
    m = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(m, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return m


def per_class_f1(y_true, y_pred, n_classes: int) -> np.ndarray:
    """F1 of each class; 0 for a class that is neither present nor predicted."""
    m = confusion(y_true, y_pred, n_classes)
    tp = np.diag(m).astype(float)
    precision_den, recall_den = m.sum(0), m.sum(1)
    den = precision_den + recall_den
    return np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)


def macro_f1(y_true, y_pred, n_classes: int) -> float:
    """Mean of the per-class F1 over the classes present in y_true (paper: F1 = 1/n sum F1_i)."""
    f1 = per_class_f1(y_true, y_pred, n_classes)
    present = np.bincount(np.asarray(y_true), minlength=n_classes) > 0
    return float(f1[present].mean()) if present.any() else 0.0


def accuracy(y_true, y_pred) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def ccc(pred, target) -> float:
    """Concordance correlation coefficient 2 cov / (var_p + var_t + (mu_p - mu_t)^2), population moments."""
    p, t = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    cov = ((p - p.mean()) * (t - t.mean())).mean()
    den = p.var() + t.var() + (p.mean() - t.mean()) ** 2
    return float(2 * cov / den) if den > 0 else 0.0


def rmse(pred, target) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2)))


def balanced_softmax_loss(logits: torch.Tensor, labels: torch.Tensor, class_counts: torch.Tensor) -> torch.Tensor:
    """Balanced Softmax cross-entropy (Ren et al. 2020): softmax over logits + log(training class count)."""
    return F.cross_entropy(logits + class_counts.to(logits).clamp(min=1).log(), labels)


def ccc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - CCC, averaged over the columns (valence, arousal)."""
    pm, tm = pred.mean(0), target.mean(0)
    cov = ((pred - pm) * (target - tm)).mean(0)
    den = pred.var(0, unbiased=False) + target.var(0, unbiased=False) + (pm - tm) ** 2
    return (1 - 2 * cov / den.clamp(min=1e-8)).mean()
