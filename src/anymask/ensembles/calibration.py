"""How far a classifier's confidence can be trusted: accuracy, NLL, ECE and reliability bins.

Everything here works on predicted class probabilities (N x C, rows summing to 1) and integer labels, so
a single model (its softmax) and an ensemble (the mean of its members' softmax) are measured the same way.
ECE follows Guo et al. (2017): confidence is the top probability, bins are equal-width on (0, 1] with the
upper edge included, and ECE is the image-weighted mean |accuracy - confidence| over the bins.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from anymask.errors import AnymaskError

ECE_BINS = 15
PROBABILITY_FLOOR = 1e-12  # log(0) would make one confidently wrong image's NLL infinite


@dataclass(frozen=True)
class ReliabilityBins:
    """Per bin of confidence: the bin's edges, its image count, mean confidence and accuracy (0 when empty).

    Bins of several evaluations add up (`pooled`): counts add, confidence and accuracy average by count.
    """

    edges: list[float]
    counts: list[int]
    confidence: list[float]
    accuracy: list[float]

    @property
    def images(self) -> int:
        return sum(self.counts)

    def ece(self) -> float:
        total = self.images
        return sum(
            n * abs(a - c) for n, a, c in zip(self.counts, self.accuracy, self.confidence, strict=True)
        ) / max(total, 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReliabilityBins:
        return cls(
            list(data["edges"]), list(data["counts"]), list(data["confidence"]), list(data["accuracy"])
        )

    @classmethod
    def pooled(cls, parts: list[ReliabilityBins]) -> ReliabilityBins:
        """The bins of all the parts' images together (the parts must share their edges)."""
        if not parts or any(p.edges != parts[0].edges for p in parts):
            raise AnymaskError("reliability bins can only be pooled over evaluations with the same bins")
        counts = [sum(p.counts[i] for p in parts) for i in range(len(parts[0].counts))]

        def mean(field: str, i: int) -> float:
            return sum(getattr(p, field)[i] * p.counts[i] for p in parts) / counts[i] if counts[i] else 0.0

        return cls(
            parts[0].edges,
            counts,
            [mean("confidence", i) for i in range(len(counts))],
            [mean("accuracy", i) for i in range(len(counts))],
        )


@dataclass(frozen=True)
class Calibration:
    """Top-1 accuracy, mean negative log-likelihood, expected calibration error and the bins behind it."""

    accuracy: float
    nll: float
    ece: float
    bins: ReliabilityBins

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "nll": self.nll,
            "ece": self.ece,
            "reliability": self.bins.to_dict(),
        }


def check_probabilities(probabilities: torch.Tensor, labels: torch.Tensor) -> None:
    if probabilities.ndim != 2 or labels.ndim != 1 or len(probabilities) != len(labels):
        raise AnymaskError(
            f"probabilities must be N x classes and labels N long; got {tuple(probabilities.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if len(labels) == 0:
        raise AnymaskError("no images to measure calibration on")
    sums = probabilities.double().sum(1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-3) or (probabilities < 0).any():
        raise AnymaskError(
            "probabilities must be non-negative and sum to 1 per image (a softmax, not logits)"
        )


def negative_log_likelihood(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean -log p(true class) in nats; probabilities are floored at 1e-12 so one image cannot make it inf."""
    check_probabilities(probabilities, labels)
    true = probabilities.double().gather(1, labels.long().view(-1, 1)).squeeze(1)
    return float(-true.clamp_min(PROBABILITY_FLOOR).log().mean())


def reliability_bins(
    probabilities: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS
) -> ReliabilityBins:
    """Equal-width confidence bins (lower edge excluded, upper included; confidence 0 joins the first)."""
    check_probabilities(probabilities, labels)
    if bins < 1:
        raise AnymaskError(f"bins must be 1 or more, got {bins}")
    confidence, predicted = probabilities.double().max(1)
    correct = (predicted == labels.to(predicted.device).long()).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    # bucketize(right=False) gives i with edges[i-1] < x <= edges[i]: bin i-1 in 0-based terms
    index = (torch.bucketize(confidence.cpu(), edges, right=False) - 1).clamp(0, bins - 1)
    counts = torch.bincount(index, minlength=bins)
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, confidence.cpu())
    correct_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct.cpu())
    safe = counts.clamp_min(1).double()
    return ReliabilityBins(
        edges.tolist(),
        counts.tolist(),
        torch.where(counts > 0, conf_sum / safe, 0.0).tolist(),
        torch.where(counts > 0, correct_sum / safe, 0.0).tolist(),
    )


def expected_calibration_error(
    probabilities: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS
) -> float:
    """ECE with `bins` equal-width bins (15, as Guo et al. and uncertainty-baselines)."""
    return reliability_bins(probabilities, labels, bins).ece()


def calibration(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> Calibration:
    """Accuracy, NLL, ECE and reliability bins of one set of predicted probabilities."""
    reliability = reliability_bins(probabilities, labels, bins)
    correct = sum(n * a for n, a in zip(reliability.counts, reliability.accuracy, strict=True))
    accuracy = correct / reliability.images  # the top-1 the bins saw, ties broken as they broke them
    return Calibration(
        accuracy, negative_log_likelihood(probabilities, labels), reliability.ece(), reliability
    )
