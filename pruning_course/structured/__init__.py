"""Structured pruning: remove whole parts of the network so the model really gets smaller.

:mod:`.layers` removes whole decoder blocks (depth pruning), scored by the angular distance between
block inputs and outputs (Gromov et al., 2024) or by ShortGPT's Block Influence (Men et al., 2024).
"""

from .layers import (
    angular_distances,
    block_influence,
    choose_blocks_to_remove,
    choose_consecutive_blocks,
    choose_lowest_blocks,
    first_blocks,
    last_blocks,
    middle_blocks,
    remove_blocks,
    removal_perplexities,
)

__all__ = [
    "angular_distances", "block_influence",
    "choose_blocks_to_remove", "choose_consecutive_blocks", "choose_lowest_blocks",
    "first_blocks", "last_blocks", "middle_blocks",
    "remove_blocks", "removal_perplexities",
]
