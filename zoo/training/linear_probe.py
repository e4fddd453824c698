"""The `svm` strategy's classifier: a linear model fitted by scikit-learn on pooled activations.

Standardised features, multinomial logistic regression (a linear classifier whose softmax gives the
probabilities serving needs), the inverse regularisation C chosen by cross-validation on the
training split; augmented views of one image always fall in the same fold, so the score is not
flattered by near-duplicates, and a held-out image is scored in its first view, which the callers make
the inference view (feature_cache.training_views): the view it is classified in once deployed. The
fitted model is folded into one nn.Linear, so export and serving see an ordinary ZooModel. `auto`
scores its candidates with the same `cross_validate`.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
MAX_FOLDS = 5


@dataclass
class LinearProbe:
    weight: np.ndarray  # [classes, features], in raw (unstandardised) feature units
    bias: np.ndarray
    c: float
    cv_accuracy: dict[float, float]  # mean CV accuracy per C
    train_accuracy: float

    def fold_into(self, layer: nn.Linear) -> None:
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(self.weight).float())
            layer.bias.copy_(torch.from_numpy(self.bias).float())


TIE = 1e-9  # mean fold accuracies closer than this are equal (a single image moves them by 1e-4 or more)


@dataclass(frozen=True)
class CrossValidation:
    """Accuracy of every fold for every C; the best C by mean accuracy (the smaller C on ties); and, per
    C, each image's held-out correctness (its first view, the inference view, classified right when it was
    held out: 1 or 0), which lets two candidates scored on the same folds be compared image by image."""

    fold_accuracy: dict[float, list[float]]
    correct: dict[float, np.ndarray]  # C -> [images], in the order of `labels`

    @property
    def mean(self) -> dict[float, float]:
        return {c: float(np.mean(a)) for c, a in self.fold_accuracy.items()}

    @property
    def best_c(self) -> float:
        means = self.mean
        top = max(means.values())
        # Means within TIE of each other count the same images right; their last bits depend on the order of
        # the sums (0.9324999999999999 for C=1 against 0.9325000000000001 for C=10 on digits, which took 10).
        return min(c for c, m in means.items() if m >= top - TIE)

    @property
    def accuracy(self) -> float:
        return self.mean[self.best_c]

    @property
    def std(self) -> float:
        return float(np.std(self.fold_accuracy[self.best_c]))

    @property
    def best_correct(self) -> np.ndarray:
        return self.correct[self.best_c]


def _stack(views: list[torch.Tensor], labels: torch.Tensor,
           dtype: torch.dtype = torch.float64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = torch.cat(views).to(dtype).numpy()
    y = np.tile(labels.numpy(), len(views))
    groups = np.tile(np.arange(len(labels)), len(views))  # an image's views stay together
    return x, y, groups


def _classifier(c: float, class_weights: list[float] | None, warm: bool = False):
    from sklearn.linear_model import LogisticRegression

    weights = None if class_weights is None else dict(enumerate(class_weights))
    return LogisticRegression(C=c, max_iter=3000, class_weight=weights, warm_start=warm)


def folds_for(labels: torch.Tensor) -> int:
    """As many folds as the smallest class allows, at most five."""
    return int(min(MAX_FOLDS, np.bincount(labels.numpy()).min()))


def _fold_scores(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray,
                 class_weights: list[float] | None, c_grid: tuple[float, ...]) -> dict[float, np.ndarray]:
    """One fold: which held-out rows each C classifies right, walking the grid from strong to weak
    regularisation with warm starts. Once a C classifies the held-out images perfectly, weaker
    regularisation cannot score higher, so the rest of the grid is given that result without fitting
    (the pick prefers the smaller C on ties, so it is unchanged)."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x[train])
    xt, xv = scaler.transform(x[train]), scaler.transform(x[test])
    clf = _classifier(min(c_grid), class_weights, warm=True)
    out: dict[float, np.ndarray] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter at tiny C
        for c in sorted(c_grid):
            if out and any(right.all() for right in out.values()):
                out[float(c)] = np.ones(len(test), dtype=bool)
                continue
            clf.set_params(C=c).fit(xt, y[train])
            out[float(c)] = clf.predict(xv) == y[test]
    return out


def cross_validate(views: list[torch.Tensor], labels: torch.Tensor, class_weights: list[float] | None = None,
                   seed: int = 0, c_grid: tuple[float, ...] = C_GRID) -> CrossValidation | None:
    """Grouped, stratified k-fold accuracy of the standardised logistic regression at every C.

    Written out rather than with GridSearchCV so that each fold walks the C grid with warm starts (the
    solver starts near the next optimum and converges to the same convex solution, several times
    faster) and the folds run in parallel threads. None when a class has a single image.
    """
    return cross_validate_many([views], labels, class_weights, seed, c_grid)[0]


def cross_validate_many(candidates: list[list[torch.Tensor]], labels: torch.Tensor,
                        class_weights: list[float] | None = None, seed: int = 0,
                        c_grid: tuple[float, ...] = C_GRID) -> list[CrossValidation | None]:
    """`cross_validate` for several feature sets of the same images (auto's candidates): the folds are
    drawn once, so every candidate is scored on the same held-out images, and all (candidate, fold)
    fits go to one pool of threads, which keeps both cores busy to the end."""
    from joblib import Parallel, delayed
    from sklearn.model_selection import StratifiedGroupKFold
    from threadpoolctl import threadpool_limits

    folds = folds_for(labels)
    if folds < 2 or not candidates:
        return [None] * len(candidates)
    # The folds only rank the C values: in float32 lbfgs ran 2.6x faster (1620 x 1280 features, 9 classes) to
    # the same held-out predictions; the one final fit (fit_linear_probe) stays in float64.
    stacked = [_stack(views, labels, torch.float32) for views in candidates]
    _, y, groups = stacked[0]
    # Folds are drawn over images (all their views together); a fold trains on every view of its training
    # images and is scored on the first view of its held-out ones (rows are view-major: those come first).
    splits = [(train, test[test < len(labels)])
              for train, test in StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(y, y, groups)]
    jobs = max(1, min(folds * len(candidates), os.cpu_count() or 1))
    # Threads, each with a single-threaded BLAS. Threads whose BLAS calls each spread over every core
    # measured 7x slower than processes (digits, 400 images, three layers: 20.6 s vs 3.1 s): the cost was
    # oversubscription, not the GIL. Worker processes get one BLAS thread each, but starting them cold, as
    # every `zoo finetune` does, took longer than the fits (photos, nine candidates: 5.2 s with a cold
    # pool, 1.9 s warm, 2.2 s in threads with one BLAS thread each).
    with threadpool_limits(1, user_api="blas"):
        results = Parallel(n_jobs=jobs, prefer="threads")(
            delayed(_fold_scores)(x, y, train, test, class_weights, c_grid)
            for x, _, _ in stacked for train, test in splits)
    out: list[CrossValidation | None] = []
    for k in range(len(candidates)):
        per_fold = results[k * folds: (k + 1) * folds]
        fold_accuracy = {float(c): [float(right[float(c)].mean()) for right in per_fold] for c in c_grid}
        correct = {}
        for c in fold_accuracy:
            hits = np.zeros(len(labels))
            for (_, test), right in zip(splits, per_fold, strict=True):
                hits[test] = right[c]
            correct[c] = hits
        out.append(CrossValidation(fold_accuracy, correct))
    return out


def fit_linear_probe(views: list[torch.Tensor], labels: torch.Tensor, class_weights: list[float] | None = None,
                     seed: int = 0, c_grid: tuple[float, ...] = C_GRID,
                     chosen: tuple[float, dict[float, float]] | None = None) -> LinearProbe:
    """views: one [N, D] tensor per view of the same N training images, the inference view first.

    `chosen`: (C, mean CV accuracy per C) from a cross-validation already run on these very features
    with these folds (auto's evidence), reused instead of running it again.
    """
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if chosen is not None:
        c, cv_means = chosen
    else:
        cv = cross_validate(views, labels, class_weights, seed, c_grid)
        c = cv.best_c if cv is not None else 0.1  # a class with one image: nothing to cross-validate
        cv_means = cv.mean if cv is not None else {}
    x, y, _ = _stack(views, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        best = make_pipeline(StandardScaler(), _classifier(c, class_weights)).fit(x, y)
    scaler, clf = best.named_steps["standardscaler"], best.named_steps["logisticregression"]
    coef, intercept = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # sklearn keeps one row for two classes; a softmax needs both
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    # standardise then linear  ==  one linear layer: W (x - mu) / s + b
    weight = coef / scaler.scale_
    bias = intercept - weight @ scaler.mean_
    return LinearProbe(weight, bias, float(c), cv_means, float(best.score(x, y)))
