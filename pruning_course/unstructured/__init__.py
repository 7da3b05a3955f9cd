"""Unstructured and N:M one-shot pruning methods: magnitude, Wanda, SparseGPT, and OWL's layer-wise sparsities;
sensitivity analysis (one layer pruned at a time, :mod:`.sensitivity`); movement pruning (learned during
fine-tuning, :mod:`.movement`)."""

from .magnitude import magnitude_mask, magnitude_masks, prune_magnitude
from .movement import MaskedLinear, ThresholdBinarizer, TopKBinarizer, cubic_sparsity, fold_masks, mask_model
from .owl import OwlResult, outlier_ratio, owl_outlier_ratios, owl_sparsities, prune_owl
from .sensitivity import LayerSensitivity, layer_sensitivity, pruned_weights, schedule_from_sensitivity
from .sparsegpt import prune_sparsegpt, sparsegpt_prune
from .wanda import prune_wanda, wanda_mask, wanda_scores

__all__ = [
    "magnitude_mask", "magnitude_masks", "prune_magnitude",
    "wanda_scores", "wanda_mask", "prune_wanda",
    "sparsegpt_prune", "prune_sparsegpt",
    "outlier_ratio", "owl_outlier_ratios", "owl_sparsities", "prune_owl", "OwlResult",
    "LayerSensitivity", "layer_sensitivity", "pruned_weights", "schedule_from_sensitivity",
    "TopKBinarizer", "ThresholdBinarizer", "MaskedLinear", "cubic_sparsity", "mask_model", "fold_masks",
]
