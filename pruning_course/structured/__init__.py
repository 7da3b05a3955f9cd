"""Structured pruning: remove whole parts of the network so the model really gets smaller.

* :mod:`.layers` removes whole decoder blocks (depth pruning), scored by the angular distance between
  block inputs and outputs (Gromov et al., 2024), ShortGPT's Block Influence (Men et al., 2024) or
  the perplexity with each block skipped.
* :mod:`.heads` scores attention heads (Michel et al., 2019) and removes them, grouped-query
  attention included.
* :mod:`.width` scores MLP neurons from calibration activations and slices them out.
* :mod:`.resize` holds the shrinking shared by heads and width; :mod:`.saving` saves and reloads
  models whose blocks now differ in shape.

Sensitivity analysis (one layer pruned at a time, unstructured) is :mod:`pruning_course.unstructured.sensitivity`.
"""

from .heads import (
    choose_heads_to_remove,
    head_importance,
    head_masks,
    normalize_per_layer,
    prune_heads_iteratively,
    qkv_gradient_importance,
    remove_heads,
    removal_mask,
)
from .layers import (
    angular_distance,
    angular_distances,
    block_influence,
    choose_blocks_to_remove,
    choose_consecutive_blocks,
    choose_lowest_blocks,
    first_blocks,
    last_blocks,
    middle_blocks,
    removal_perplexities,
    remove_blocks,
)
from .saving import load_pruned, pruned_structure, save_pruned
from .width import choose_neurons_to_keep, mlp_neuron_importance, neuron_scores, prune_mlp_width

__all__ = [
    "head_masks", "removal_mask", "head_importance", "normalize_per_layer", "qkv_gradient_importance",
    "choose_heads_to_remove", "remove_heads", "prune_heads_iteratively",
    "angular_distance", "angular_distances", "block_influence", "removal_perplexities",
    "choose_blocks_to_remove", "choose_consecutive_blocks", "choose_lowest_blocks",
    "first_blocks", "last_blocks", "middle_blocks", "remove_blocks",
    "neuron_scores", "mlp_neuron_importance", "choose_neurons_to_keep", "prune_mlp_width",
    "save_pruned", "load_pruned", "pruned_structure",
]
