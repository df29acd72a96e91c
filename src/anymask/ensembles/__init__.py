"""Ensembles of sparse networks: prune-and-tune children of one trained network, sets of independently
trained runs (deep ensembles), and calibration (NLL, ECE, reliability diagrams) for single models and
ensembles alike.

A capability on top of the core: it uses masks, models, data and the run pipeline (`run_experiment`
trains each child as an ordinary run); nothing below it imports it.
"""

from anymask.ensembles.calibration import (
    ECE_BINS,
    Calibration,
    ReliabilityBins,
    calibration,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_bins,
)
from anymask.ensembles.combine import Ensemble, disagreement, mean_probabilities, predict_probabilities
from anymask.ensembles.evaluate import ENSEMBLE_JSON, evaluate_runs
from anymask.ensembles.prune_and_tune import EnsembleSettings, prune_and_tune
from anymask.ensembles.pruning import (
    ANTI_RANDOM,
    anti_random_masks,
    anti_random_pair,
    anti_random_within,
    parent_mask,
    pruned_child,
)

__all__ = [
    "ANTI_RANDOM",
    "ECE_BINS",
    "ENSEMBLE_JSON",
    "Calibration",
    "Ensemble",
    "EnsembleSettings",
    "ReliabilityBins",
    "anti_random_masks",
    "anti_random_pair",
    "anti_random_within",
    "calibration",
    "disagreement",
    "evaluate_runs",
    "expected_calibration_error",
    "mean_probabilities",
    "negative_log_likelihood",
    "parent_mask",
    "predict_probabilities",
    "prune_and_tune",
    "pruned_child",
    "reliability_bins",
]
