"""auto's pick among measured candidates: a gap the held-out images cannot tell from noise is a tie, which
the quadrant rule breaks; a clear gap overrules the rule."""
import numpy as np
import pytest
import torch

from zoo.advisor.evidence import Candidate, choose, gap_margin
from zoo.training.linear_probe import cross_validate


def _candidate(strategy, layer, right, folds=5):
    right = np.asarray(right, dtype=float)
    acc = float(right.mean())
    return Candidate(strategy, layer, acc, 0.01, 0.0, "test", se=0.01 / np.sqrt(folds), held_out=tuple(right))


def test_a_gap_of_a_few_images_is_a_tie_the_prior_breaks():
    n = 400
    head = np.ones(n)
    head[:8] = 0  # 98.0%
    svm = np.ones(n)
    svm[3:8] = 0  # 98.75%: right on 3 images head gets wrong, nothing else differs
    a, b = _candidate("svm", "stage6", svm), _candidate("head", None, head)
    assert a.accuracy - b.accuracy < gap_margin(a, b)  # 3 discordant images: within noise
    pick, reason = choose([a, b], prior="head")
    assert pick is b and "quadrant rule breaks" in reason


def test_a_clear_gap_overrules_the_prior():
    n = 400
    head = np.ones(n)
    head[:60] = 0  # 85%
    svm = np.ones(n)
    svm[:4] = 0  # 99%
    a, b = _candidate("svm", "stage6", svm), _candidate("head", None, head)
    pick, reason = choose([a, b], prior="head")
    assert pick is a and "beyond the noise" in reason


def test_the_margin_never_falls_below_half_a_point():
    same = np.ones(1000)
    same[:10] = 0
    a, b = _candidate("svm", "stage5", same), _candidate("head", None, same)
    assert gap_margin(a, b) == 0.005


def test_unpaired_candidates_add_their_errors():
    pilot = Candidate("partial", None, 0.9, 0.03, 1.0, "pilot")  # a pilot: its std is the binomial error
    probe = Candidate("svm", "stage6", 0.8, 0.02, 1.0, "cv", se=0.01)
    assert abs(gap_margin(pilot, probe) - 1.96 * np.hypot(0.03, 0.01)) < 1e-12


def test_cross_validation_reports_each_images_held_out_correctness():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(20)
    views = [torch.randn(60, 8, generator=g) + 3 * torch.nn.functional.one_hot(labels, 8) for _ in range(2)]
    cv = cross_validate(views, labels, seed=0)
    assert cv is not None
    right = cv.best_correct
    assert right.shape == (60,) and set(np.unique(right)) <= {0.0, 1.0}  # each image scored in its first view
    assert abs(right.mean() - cv.accuracy) < 1e-9  # equal folds of whole images: the same mean


def test_the_smaller_c_wins_a_tie_whatever_the_last_bits_of_the_means():
    """Fold accuracies that add up to the same images in another order: their means differ in the last bit
    (0.9324999999999999 against 0.9325000000000001), and the smaller C must still win the tie."""
    from zoo.training.linear_probe import CrossValidation

    folds = [0.9375, 0.925, 0.93125, 0.9375, 0.93125]
    tie = CrossValidation({0.1: [0.9] * 5, 1.0: folds[::-1], 10.0: folds}, {})
    assert tie.mean[10.0] > tie.mean[1.0]  # the bits this test is about
    assert tie.best_c == 1.0 and tie.accuracy == pytest.approx(0.9325)
    clear = CrossValidation({0.1: [0.9] * 5, 1.0: folds, 10.0: [f + 0.0125 for f in folds]}, {})
    assert clear.best_c == 10.0  # one image in a fold of 80 is a real difference


def test_held_out_images_are_scored_in_the_inference_view_the_first():
    """Trained on every view, scored on the first: the inference view, in which a deployed classifier sees
    an image. Here the augmented views carry the label on other features than the inference view, so a
    score over all views (what the evidence did before) would say far less than the first view earns."""
    from zoo.training.feature_cache import training_views

    assert training_views(4) == [None, 0, 1, 2] and training_views(None) == [None] and training_views(1) == [None]
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(30)
    signal = 4 * torch.nn.functional.one_hot(labels, 3).float()
    inference = torch.cat([signal, torch.randn(90, 3, generator=g)], 1)
    augmented = [torch.cat([torch.randn(90, 3, generator=g), signal], 1) + 3 * torch.randn(90, 6, generator=g)
                 for _ in range(3)]
    alone = cross_validate([inference], labels, seed=0)
    together = cross_validate([inference, *augmented], labels, seed=0)
    assert alone is not None and together is not None
    assert alone.accuracy == 1.0 and together.accuracy >= 0.85
    flipped = cross_validate([augmented[0], inference, *augmented[1:]], labels, seed=0)  # a noisy view first
    assert flipped is not None and flipped.accuracy < together.accuracy - 0.1


def test_the_default_pilot_budget_on_small_data_is_half_the_evidence_pass_less_what_auto_spent_beside_it():
    from zoo.advisor.evidence import ProbeFeatures
    from zoo.advisor.pilot import DEFAULT_BUDGET_MINUTES
    from zoo.advisor.recommend import AdviseSettings, Findings, _pilot_budget
    from zoo.backbones import get_spec

    features = ProbeFeatures({}, torch.zeros(100, dtype=torch.long), views=4, from_cache=0, compute_seconds=40.0)
    spec = get_spec("efficientnet_lite0")
    small = Findings("efficientnet_lite0", spec, None, [50, 50], "small", True, spec.preprocess_config(),
                     features=features)
    budget, why = _pilot_budget(small, AdviseSettings())
    assert budget == 20.0 and "--budget" in why  # the reason says how to give pilots more
    # Cross-validation and similarity are auto's own cost, beside the pass the picked strategy also needs.
    small.seconds = {"setup": 1.0, "features": 40.0, "similarity": 2.0, "candidates": 5.0, "pixels": 0.5}
    assert _pilot_budget(small, AdviseSettings())[0] == 12.5
    small.seconds["candidates"] = 30.0  # nothing left: no pilot, never a negative budget
    assert _pilot_budget(small, AdviseSettings())[0] == 0.0
    assert _pilot_budget(small, AdviseSettings(budget_minutes=2))[0] == 120.0  # an explicit budget is kept
    large = Findings("efficientnet_lite0", spec, None, [800, 800], "large", False, spec.preprocess_config(),
                     features=features)
    assert _pilot_budget(large, AdviseSettings())[0] == 60 * DEFAULT_BUDGET_MINUTES
