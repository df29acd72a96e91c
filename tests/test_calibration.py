"""Calibration measures against hand-computed values, and the mean-of-softmax combination."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anymask.ensembles import (
    Ensemble,
    ReliabilityBins,
    calibration,
    disagreement,
    expected_calibration_error,
    mean_probabilities,
    negative_log_likelihood,
    reliability_bins,
)
from anymask.errors import AnymaskError

# Four images, each alone in its bin of 15: confidence .95 (right), .62 (wrong), .71 (right), .83 (right).
PROBABILITIES = torch.tensor([[0.95, 0.05], [0.62, 0.38], [0.29, 0.71], [0.83, 0.17]], dtype=torch.float64)
LABELS = torch.tensor([0, 1, 1, 0])


def test_ece_and_nll_match_hand_computed_values() -> None:
    # ECE = (|1 - .95| + |0 - .62| + |1 - .71| + |1 - .83|) / 4
    assert expected_calibration_error(PROBABILITIES, LABELS) == pytest.approx(1.13 / 4, abs=1e-12)
    # NLL = -(ln .95 + ln .38 + ln .71 + ln .83) / 4
    assert negative_log_likelihood(PROBABILITIES, LABELS) == pytest.approx(0.3869243, abs=1e-6)
    measured = calibration(PROBABILITIES, LABELS)
    assert measured.accuracy == pytest.approx(0.75)
    assert [i for i, n in enumerate(measured.bins.counts) if n] == [9, 10, 12, 14]


def test_images_sharing_a_bin_are_averaged_before_the_gap() -> None:
    # Both in (0.8, 0.8667]: accuracy 1/2, mean confidence 0.835, so ECE = |0.5 - 0.835|.
    probabilities = torch.tensor([[0.82, 0.18], [0.85, 0.15]], dtype=torch.float64)
    assert expected_calibration_error(probabilities, torch.tensor([1, 0])) == pytest.approx(0.335, abs=1e-12)


def test_a_confidently_wrong_image_has_a_finite_nll() -> None:
    nll = negative_log_likelihood(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    assert nll == pytest.approx(-math.log(1e-12))


def test_logits_are_refused_in_one_line() -> None:
    with pytest.raises(AnymaskError, match="a softmax, not logits"):
        calibration(torch.tensor([[2.0, -1.0]]), torch.tensor([0]))


def probabilities_and_labels(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    n, classes = draw(st.integers(1, 40)), draw(st.integers(2, 6))
    seed = draw(st.integers(0, 10_000))
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=generator, dtype=torch.float64) * draw(st.floats(0.1, 5))
    return logits.softmax(1), torch.randint(0, classes, (n,), generator=generator)


random_predictions = st.composite(probabilities_and_labels)


@settings(max_examples=40, deadline=None)
@given(random_predictions())
def test_one_bin_ece_is_the_gap_between_accuracy_and_mean_confidence(data) -> None:
    probabilities, labels = data
    accuracy = float((probabilities.argmax(1) == labels).double().mean())
    confidence = float(probabilities.max(1).values.mean())
    assert expected_calibration_error(probabilities, labels, bins=1) == pytest.approx(
        abs(accuracy - confidence)
    )
    assert 0 <= expected_calibration_error(probabilities, labels) <= 1


@settings(max_examples=30, deadline=None)
@given(random_predictions(), random_predictions())
def test_pooled_bins_are_the_bins_of_all_images(first, second) -> None:
    classes = min(first[0].shape[1], second[0].shape[1])

    def cut(data):  # the same classes for both: renormalise the first `classes` columns
        p = data[0][:, :classes]
        return p / p.sum(1, keepdim=True), data[1].clamp_max(classes - 1)

    (p1, y1), (p2, y2) = cut(first), cut(second)
    pooled = ReliabilityBins.pooled([reliability_bins(p1, y1), reliability_bins(p2, y2)])
    together = reliability_bins(torch.cat([p1, p2]), torch.cat([y1, y2]))
    assert pooled.counts == together.counts
    assert pooled.accuracy == pytest.approx(together.accuracy)
    assert pooled.confidence == pytest.approx(together.confidence)
    assert pooled.ece() == pytest.approx(together.ece())


@settings(max_examples=30, deadline=None)
@given(st.lists(random_predictions(), min_size=2, max_size=4))
def test_the_ensemble_nll_is_at_most_the_members_mean_nll(members) -> None:
    n, classes = members[0][0].shape
    same = [m[0] for m in members if m[0].shape == (n, classes)]
    labels = members[0][1]
    combined = mean_probabilities(same)
    assert combined.sum(1) == pytest.approx(torch.ones(n, dtype=torch.float64))
    mean_member = sum(negative_log_likelihood(p, labels) for p in same) / len(same)
    assert negative_log_likelihood(combined, labels) <= mean_member + 1e-12  # Jensen: -log is convex


def test_disagreement_counts_differing_top_classes() -> None:
    a = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9]])
    b = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.1, 0.9], [0.9, 0.1]])
    assert disagreement([a, b]) == pytest.approx(0.5)
    assert disagreement([a]) == 0.0


def test_ensemble_of_own_models_averages_their_softmax() -> None:
    torch.manual_seed(0)
    members = [torch.nn.Linear(5, 3) for _ in range(3)]
    images = torch.randn(7, 5)
    expected = torch.stack([m(images).softmax(1) for m in members]).mean(0)
    ensemble = Ensemble(members)
    assert torch.allclose(ensemble(images), expected)
    assert torch.allclose(ensemble.log_probabilities(images).exp(), expected)
