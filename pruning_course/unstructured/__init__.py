"""Unstructured and N:M one-shot pruning methods: magnitude, Wanda, SparseGPT, RIA (with its channel permutation
for N:M), DSnoT (prune-and-grow on a base method's mask), and OWL's layer-wise sparsities;
sensitivity analysis (one layer pruned at a time, :mod:`.sensitivity`); movement pruning (learned during
fine-tuning, :mod:`.movement`)."""

from .dsnot import dsnot_prune_layer, dsnot_update
from .magnitude import magnitude_mask, magnitude_masks, prune_magnitude
from .movement import MaskedLinear, ThresholdBinarizer, TopKBinarizer, cubic_sparsity, fold_masks, mask_model
from .owl import OwlResult, outlier_ratio, owl_outlier_ratios, owl_sparsities, prune_owl
from .sensitivity import LayerSensitivity, layer_sensitivity, pruned_weights, schedule_from_sensitivity
from .ria import ria_channel_permutation, ria_mask, ria_scores, unpermute_mask
from .sparsegpt import prune_sparsegpt, sparsegpt_prune
from .wanda import prune_wanda, wanda_mask, wanda_scores

__all__ = [
    "magnitude_mask", "magnitude_masks", "prune_magnitude",
    "wanda_scores", "wanda_mask", "prune_wanda",
    "sparsegpt_prune", "prune_sparsegpt",
    "ria_scores", "ria_mask", "ria_channel_permutation", "unpermute_mask",
    "dsnot_update", "dsnot_prune_layer",
    "outlier_ratio", "owl_outlier_ratios", "owl_sparsities", "prune_owl", "OwlResult",
    "LayerSensitivity", "layer_sensitivity", "pruned_weights", "schedule_from_sensitivity",
    "TopKBinarizer", "ThresholdBinarizer", "MaskedLinear", "cubic_sparsity", "mask_model", "fold_masks",
]
