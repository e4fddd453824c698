"""The `svm` strategy's classifier: a linear model fitted by scikit-learn on pooled activations.

Standardised features, multinomial logistic regression (a linear classifier whose softmax gives the
probabilities serving needs), the inverse regularisation C chosen by cross-validation on the
training split; augmented views of one image always fall in the same fold, so the score is not
flattered by near-duplicates. The fitted model is folded into one nn.Linear, so export and serving
see an ordinary ZooModel.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


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


def fit_linear_probe(views: list[torch.Tensor], labels: torch.Tensor, class_weights: list[float] | None = None,
                     seed: int = 0, c_grid: tuple[float, ...] = C_GRID) -> LinearProbe:
    """views: one [N, D] tensor per augmentation view of the same N training images."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = torch.cat(views).double().numpy()
    y = np.tile(labels.numpy(), len(views))
    groups = np.tile(np.arange(len(labels)), len(views))  # an image's views stay together
    weights = None if class_weights is None else dict(enumerate(class_weights))
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, class_weight=weights))
    folds = int(min(5, np.bincount(labels.numpy()).min()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter at tiny C
        if folds >= 2:
            search = GridSearchCV(pipe, {"logisticregression__C": list(c_grid)},
                                  cv=StratifiedGroupKFold(folds, shuffle=True, random_state=seed), n_jobs=1)
            search.fit(x, y, groups=groups)
            best = search.best_estimator_
            cv = {float(c): float(s) for c, s in zip(c_grid, search.cv_results_["mean_test_score"], strict=True)}
        else:  # a class with one image: nothing to cross-validate, keep a middle value
            best = pipe.set_params(logisticregression__C=0.1).fit(x, y)
            cv = {}
    scaler, clf = best.named_steps["standardscaler"], best.named_steps["logisticregression"]
    coef, intercept = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # sklearn keeps one row for two classes; a softmax needs both
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    # standardise then linear  ==  one linear layer: W (x - mu) / s + b
    weight = coef / scaler.scale_
    bias = intercept - weight @ scaler.mean_
    return LinearProbe(weight, bias, float(clf.C), cv, float(best.score(x, y)))
