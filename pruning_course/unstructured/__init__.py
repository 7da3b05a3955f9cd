"""Unstructured and N:M one-shot pruning methods: magnitude, Wanda, SparseGPT, and OWL's layer-wise sparsities;
movement pruning (learned during fine-tuning, :mod:`.movement`)."""

from .magnitude import magnitude_mask, magnitude_masks, prune_magnitude
from .movement import MaskedLinear, ThresholdBinarizer, TopKBinarizer, cubic_sparsity, fold_masks, mask_model
from .owl import OwlResult, outlier_ratio, owl_outlier_ratios, owl_sparsities, prune_owl
from .sparsegpt import prune_sparsegpt, sparsegpt_prune
from .wanda import prune_wanda, wanda_mask, wanda_scores

__all__ = [
    "magnitude_mask", "magnitude_masks", "prune_magnitude",
    "wanda_scores", "wanda_mask", "prune_wanda",
    "sparsegpt_prune", "prune_sparsegpt",
    "outlier_ratio", "owl_outlier_ratios", "owl_sparsities", "prune_owl", "OwlResult",
    "TopKBinarizer", "ThresholdBinarizer", "MaskedLinear", "cubic_sparsity", "mask_model", "fold_masks",
]
