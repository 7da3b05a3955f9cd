"""Graded checks of notebook 05 (layer pruning: which decoder blocks are redundant?).

The notebook's exercises are the three steps of depth pruning:

``angular_distance(x_in, x_out)``
    Gromov et al. (2024), Eq. 7: the mean over every token of ``arccos(cos_sim(x_in, x_out)) / pi``,
    for two hidden-state tensors of shape ``(batch, seq, hidden)``. The exercise averages over *all*
    tokens, the package's default (:func:`pruning_course.structured.angular_distances`); the
    paper's last-token-only variant (``last_token_only=True`` there) is diagnosed as a mistake here.
``choose_consecutive_blocks(distances, n)``
    the ``n`` consecutive blocks of the window with the smallest distance, ``distances[l]`` scoring
    the window that starts at block ``l`` (:func:`pruning_course.structured.choose_consecutive_blocks`).
``remove_blocks(model, adapter, indices)``
    delete decoder blocks in place, renumber every attention ``layer_idx`` and update
    ``config.num_hidden_layers`` (:func:`pruning_course.structured.remove_blocks`); out-of-range
    indices and removing every block raise ``ValueError``.

The reference is the package's tensor-level
:func:`pruning_course.structured.layers.angular_distance` (its block loop computes the same
expression; ``tests/test_checks_layers.py`` ties the two together). Each check
calls the learner's function on seeded inputs, compares with the package and, on a mismatch,
recomputes the classic wrong variants to say which mistake the learner's result matches.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..architectures import adapter_for
from ..structured.layers import angular_distance
from ..structured.layers import angular_distances as package_angular_distances
from ..structured.layers import choose_consecutive_blocks as package_choose_consecutive_blocks
from ..structured.layers import choose_lowest_blocks
from ..structured.layers import remove_blocks as package_remove_blocks
from ..testing import tiny_random_model
from . import CheckFailed, call, call_expecting_value_error, diagnose, expect_number, fail, generator, graded_check, passed

__all__ = [
    "angular_distance",
    "check_angular_distance",
    "check_choose_consecutive_blocks",
    "check_remove_blocks",
]

TOLERANCE = 5e-4  # absolute, on distances in [0, 1]: float32 arccos near cos = 1 is accurate to about 1e-4


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _one_distance(result, where: str, fn_name: str, per_token_shape: tuple[int, ...]) -> float:
    """The learner's distance as a float (NaN allowed: the caller diagnoses it)."""
    __tracebackhide__ = True
    if isinstance(result, torch.Tensor) and tuple(result.shape) in (per_token_shape, per_token_shape[:1],
                                                                    (math.prod(per_token_shape),)):
        fail(f"{where}: {fn_name} returned a tensor of shape {tuple(result.shape)}, one value per token (or per sequence). "
             "Return ONE number: the mean of arccos(cos)/pi over every token of every sequence (.mean()).")
    return expect_number(result, f"{where}: {fn_name}", finite=False)


def _hidden_pair(gen: torch.Generator, shape: tuple[int, int, int], identical_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden-state-like ``(x_in, x_out)``: a residual stream with outlier features and a block update of
    very different size per token. The last ``identical_tokens`` positions of every sequence leave the
    block unchanged in direction (``x_out = c * x_in``, the case whose float32 cosine can exceed 1)."""
    __tracebackhide__ = True
    batch, seq, hidden = shape
    feature_scale = torch.logspace(-0.5, 1, hidden)[torch.randperm(hidden, generator=gen)]
    x_in = torch.randn(batch, seq, hidden, generator=gen) * feature_scale
    update_size = torch.logspace(-1.3, 0.5, batch * seq)[torch.randperm(batch * seq, generator=gen)].view(batch, seq, 1)
    update = torch.randn(batch, seq, hidden, generator=gen) * feature_scale.flip(0) * update_size
    x_out = x_in + update
    if identical_tokens:
        x_out[:, seq - identical_tokens:] = x_in[:, seq - identical_tokens:] * torch.tensor([1.0, 2.5, 0.75])[
            torch.arange(identical_tokens) % 3].view(1, -1, 1)
    return x_in, x_out


def _unclamped_cosine_exceeds_one(x_in: torch.Tensor, x_out: torch.Tensor) -> bool:
    """Whether a float32 cosine (library or by hand) of some token pair comes out above 1 or below -1."""
    __tracebackhide__ = True
    library = F.cosine_similarity(x_in, x_out, dim=-1)
    by_hand = (x_in * x_out).sum(-1) / (x_in.norm(dim=-1) * x_out.norm(dim=-1))
    return bool((library.abs() > 1).any() or (by_hand.abs() > 1).any())


def _distance_variants(x_in: torch.Tensor, x_out: torch.Tensor) -> list[tuple[float, str]]:
    """The classic wrong answers for these inputs, with what each one means."""
    __tracebackhide__ = True
    a, b = x_in.double(), x_out.double()
    cos = F.cosine_similarity(a, b, dim=-1).clamp(-1, 1)
    reference = float((torch.arccos(cos) / math.pi).mean())

    def dist(u, v, dim=-1):
        __tracebackhide__ = True
        return float((torch.arccos(F.cosine_similarity(u, v, dim=dim).clamp(-1, 1)) / math.pi).mean())

    return [
        (reference * math.pi, "you forgot to divide by pi: torch.arccos returns an angle in radians, in [0, pi]; "
         "Eq. 7 divides by pi so that the distance lies in [0, 1]"),
        (reference * 180.0, "your value is the angle in DEGREES; Eq. 7 divides the angle in radians by pi, "
         "which gives a distance in [0, 1]"),
        (float(cos.mean()), "that is the mean cosine SIMILARITY (1 for an unchanged direction); the distance is "
         "arccos(cos) / pi (0 for an unchanged direction)"),
        (float((1 - cos).mean()), "that is 1 - cos, ShortGPT's Block Influence, not the angular distance: take "
         "arccos(cos) / pi (the two rank single blocks alike, but the exercise asks for Eq. 7)"),
        (1.0 - reference, "you return 1 - the distance (a similarity); the distance is arccos(cos) / pi itself"),
        (dist(a[:, -1], b[:, -1]), "you used only the LAST token of each sequence (the paper's choice); this "
         "exercise, like the package's default, averages over every token of every sequence, a much less noisy "
         "estimate from a few calibration windows"),
        (dist(a[:, 0], b[:, 0]), "you used only the FIRST token of each sequence; average over every token of every "
         "sequence"),
        (float(torch.arccos(cos.mean().clamp(-1, 1)) / math.pi), "you take arccos of the MEAN cosine; Eq. 7's "
         "distance is computed per token and then averaged: mean(arccos(cos_t)) / pi"),
        (dist(a.reshape(-1, a.shape[-1]).mean(0), b.reshape(-1, b.shape[-1]).mean(0), dim=0),
         "you averaged the hidden VECTORS over the tokens before taking the cosine. Compute the cosine of every "
         "token's pair of vectors first (over the hidden dimension), then average the distances"),
        (dist(a.mean(1), b.mean(1)), "you averaged each sequence's hidden vectors over its positions before taking "
         "the cosine. Compute the cosine of every token's pair of vectors first, then average the distances"),
        (dist(a, b, dim=1), "your cosine runs over the SEQUENCE axis (dim=1), which is the default of "
         "F.cosine_similarity: pass dim=-1, the hidden dimension, so that every token gets its own cosine"),
        (dist(a, b, dim=0), "your cosine runs over the BATCH axis (dim=0): take it over the hidden dimension "
         "(dim=-1), one cosine per token"),
        (dist(a.reshape(-1), b.reshape(-1), dim=0), "you took one cosine of the two whole tensors flattened into "
         "single vectors; take one cosine per token, over the hidden dimension (dim=-1), then average"),
        (dist(b - a, a), "you took the cosine of the block's UPDATE x_out - x_in with x_in; Eq. 7 compares the "
         "two hidden states themselves: cos(x_in, x_out)"),
        (dist(b - a, b), "you took the cosine of the block's UPDATE x_out - x_in with x_out; Eq. 7 compares the "
         "two hidden states themselves: cos(x_in, x_out)"),
        (dist(a[:, :-1], b[:, 1:]), "you paired each token's input with the NEXT token's output; compare the same "
         "token's vectors, x_in[b, t] with x_out[b, t]"),
        (dist(a[:, :-1], a[:, 1:]), "you compared neighbouring tokens of x_in with each other; compare each "
         "token's input with its own output, cos(x_in[b, t], x_out[b, t])"),
        (dist(b[:, :-1], b[:, 1:]), "you compared neighbouring tokens of x_out with each other; compare each "
         "token's input with its own output, cos(x_in[b, t], x_out[b, t])"),
    ]


# ---------------------------------------------------------------------------------------------
# 1. angular distance
# ---------------------------------------------------------------------------------------------


def _check_distance_case(fn: Callable, x_in: torch.Tensor, x_out: torch.Tensor, reference: float, where: str) -> None:
    __tracebackhide__ = True
    name = "angular_distance"
    a, b = x_in.clone(), x_out.clone()
    result = _one_distance(call(fn, a, b, name=name, returns="one number, a float or a 0-d tensor"), where, name, tuple(x_in.shape[:2]))
    if not (torch.equal(a, x_in) and torch.equal(b, x_out)):
        fail(f"{where}: {name} modified its inputs in place (e.g. normalising with /=); the hidden states are needed "
             "again afterwards: use out-of-place operations")
    if math.isfinite(result) and abs(result - reference) <= TOLERANCE:
        return
    if not math.isfinite(result):
        if _unclamped_cosine_exceeds_one(x_in, x_out):
            fail(f"{where}: your distance is {result}. Some tokens here leave the block with their direction unchanged "
                 "(x_out = c * x_in): their cosine is 1 in exact arithmetic, but in float32 it comes out as "
                 "1.0000001, and torch.arccos of a value above 1 is NaN. Clamp the cosine to [-1, 1] "
                 "(cos.clamp(-1, 1)) before taking arccos.")
        fail(f"{where}: your distance is {result}, expected {reference:.6g}: look for a division by a zero norm or an "
             "arccos of a value outside [-1, 1]")
    diagnose(
        _distance_variants(x_in, x_out),
        lambda value: abs(result - value) <= TOLERANCE,
        describe=lambda message: f"{where}: your value {result:.6g}: {message} (expected {reference:.6g}).",
    )
    if not 0.0 <= result <= 1.0:
        fail(f"{where}: your value {result:.6g} lies outside [0, 1]; arccos(cos) / pi is between 0 (same direction) "
             f"and 1 (opposite directions). Expected {reference:.6g}.")
    fail(f"{where}: angular_distance returned {result:.6g}, expected mean over tokens of arccos(cos_sim(x_in, x_out)) "
         f"/ pi = {reference:.6g} (cosine over the hidden dimension, dim=-1, one per token).")


def _block_boundaries(model: nn.Module, windows: torch.Tensor) -> list[torch.Tensor]:
    """The hidden state entering every block, and the one leaving the last block (before the final norm)."""
    __tracebackhide__ = True
    adapter = adapter_for(model)
    blocks = adapter.blocks(model)
    states: list[torch.Tensor] = []

    def record_input(_module, args, kwargs):
        __tracebackhide__ = True
        states.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    def record_output(_module, _args, output):
        __tracebackhide__ = True
        states.append((output[0] if isinstance(output, tuple) else output).detach().clone())

    handles = [block.register_forward_pre_hook(record_input, with_kwargs=True) for block in blocks]
    handles.append(blocks[-1].register_forward_hook(record_output))
    try:
        with torch.no_grad():
            model(input_ids=windows, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return states


@graded_check
def check_angular_distance(fn: Callable) -> None:
    """Check ``angular_distance(x_in, x_out)`` for hidden states of shape ``(batch, seq, hidden)``.

    The answer is one number, the mean over every token of every sequence of
    ``arccos(cos_sim(x_in[b, t], x_out[b, t])) / pi`` (a float or a 0-d tensor; float32 or float64
    arithmetic both pass). Checked on synthetic hidden states (outlier features, updates of very
    different size per token), on tokens whose direction does not change (the cosine must be clamped
    before ``arccos``), and against the package's ``angular_distances`` on a tiny Llama's real block
    inputs and outputs.
    """
    __tracebackhide__ = True
    gen = generator(50)
    for shape in ((2, 7, 16), (3, 5, 10), (1, 9, 24)):
        x_in, x_out = _hidden_pair(gen, shape)
        _check_distance_case(fn, x_in, x_out, angular_distance(x_in, x_out),
                             f"on hidden states of shape {shape}")

    x_in, x_out = _hidden_pair(gen, (3, 8, 16), identical_tokens=5)
    _check_distance_case(fn, x_in, x_out, angular_distance(x_in, x_out),
                         "on hidden states of shape (3, 8, 16) whose last 5 tokens keep their direction")

    model = tiny_random_model("llama", seed=51, num_blocks=4)
    windows = torch.randint(0, 384, (3, 12), generator=gen)
    states = _block_boundaries(model, windows)
    adapter = adapter_for(model)
    for n in (1, 2):
        package = package_angular_distances(model, adapter, windows, n=n, batch_size=2)
        for start in range(len(states) - n):
            where = (f"on a tiny Llama's hidden states entering block {start} and leaving block {start + n - 1} "
                     f"(shape {tuple(states[start].shape)})")
            _check_distance_case(fn, states[start], states[start + n], float(package[start]), where)
    passed("angular_distance = mean over all tokens of arccos(cos_sim(x_in, x_out)) / pi, "
           "equal to the package's angular_distances on a model's block boundaries")


# ---------------------------------------------------------------------------------------------
# 2. choosing n consecutive blocks
# ---------------------------------------------------------------------------------------------


def _as_indices(result, where: str, fn_name: str) -> list[int]:
    __tracebackhide__ = True
    if isinstance(result, torch.Tensor):
        result = result.detach().reshape(-1).tolist()
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        fail(f"{where}: {fn_name} returned the single number {result!r}; return the LIST of the n block indices to "
             "remove, e.g. list(range(start, start + n))")
    if not isinstance(result, (list, tuple, range)):
        fail(f"{where}: {fn_name} should return a list of block indices, got {type(result).__name__}")
    indices = []
    for value in result:
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            fail(f"{where}: {fn_name} should return whole-number block indices, got {value!r} in {list(result)!r}")
        indices.append(int(value))
    return indices


def _block_choice_cases(gen: torch.Generator) -> list[tuple[int, int, torch.Tensor]]:
    """(num_blocks, n, distances) with the minimum in the middle, at the last window, first window, and a tie."""
    __tracebackhide__ = True
    cases = []
    for num_blocks, n, argmin in ((30, 8, 13), (10, 3, 7), (6, 1, 0), (12, 4, 5)):
        d = 0.2 + 0.3 * torch.rand(num_blocks - n + 1, generator=gen)
        d[argmin] = 0.1
        cases.append((num_blocks, n, d))
    d = 0.2 + 0.3 * torch.rand(7, generator=gen)  # 8 blocks, n = 2: equal minima at windows 2 and 5
    d[2] = d[5] = 0.05
    cases.append((8, 2, d))
    return cases


@graded_check
def check_choose_consecutive_blocks(fn: Callable) -> None:
    """Check ``choose_consecutive_blocks(distances, n)``.

    ``distances`` (a float tensor of ``num_blocks - n + 1`` values) comes from angular distances
    over windows of ``n`` blocks, ``distances[l]`` scoring blocks ``l .. l + n - 1``. The answer is
    the ``n`` block indices of the window with the smallest distance, in increasing order (a list,
    tuple, range or tensor of ints); on ties, the earliest window
    (:func:`pruning_course.structured.choose_consecutive_blocks`).
    """
    __tracebackhide__ = True
    name = "choose_consecutive_blocks"
    gen = generator(52)
    for num_blocks, n, distances in _block_choice_cases(gen):
        where = f"with {num_blocks} blocks, n={n} ({distances.numel()} distances)"
        d_in = distances.clone()
        got = _as_indices(call(fn, d_in, n, name=name, returns="a list of the n consecutive block indices to remove"), where, name)
        if not torch.equal(d_in, distances):
            fail(f"{where}: {name} modified the distances in place; use out-of-place operations")
        expected = package_choose_consecutive_blocks(distances, n)
        if got == expected:
            continue
        start = expected[0]
        largest = int(torch.argmax(distances))
        ordered = sorted(got)
        if ordered == expected:
            fail(f"{where}: right blocks, wrong order: {got}; return them in increasing order, {expected}")
        if len(set(got)) != len(got):
            fail(f"{where}: your answer {got} names a block more than once")
        if ordered == list(range(start, start + n + 1)):
            fail(f"{where}: off by one: you return {n + 1} blocks {got}; a window of n={n} blocks starting at block "
                 f"{start} is range({start}, {start} + {n}) = {expected} (range excludes its end)")
        if ordered == list(range(start, start + n - 1)):
            fail(f"{where}: off by one: you return {n - 1} blocks {got}; a window of n={n} blocks starting at block "
                 f"{start} is range({start}, {start} + {n}) = {expected}")
        if ordered == list(range(largest, largest + n)):
            fail(f"{where}: you picked the window with the LARGEST distance ({got}); the most redundant blocks change "
                 f"the hidden states least: take the smallest distance (argmin), which gives {expected}")
        if ordered == list(range(start - n + 1, start + 1)):
            fail(f"{where}: you end the window at the smallest distance ({got}); distances[l] compares the state "
                 f"entering block l with the one leaving block l + n - 1, so the window STARTS at l: {expected}")
        if ordered == list(range(start + 1, start + n + 1)):
            fail(f"{where}: your window is shifted by one ({got}); distances[l] compares the state entering block l "
                 f"with the one leaving block l + n - 1, so the window is blocks l .. l + n - 1: {expected}")
        if n > 1 and ordered == choose_lowest_blocks(distances, n):
            fail(f"{where}: you took the {n} smallest distances ({got}), i.e. {n} different windows. Each distances[l] "
                 f"already scores a whole window of n={n} consecutive blocks starting at l: take the single best window, "
                 f"start = argmin, and return its {n} blocks {expected}")
        if len(got) != n:
            fail(f"{where}: you return {len(got)} blocks {got}; the answer is n={n} consecutive block indices")
        ties = (distances == distances.min()).nonzero().flatten().tolist()
        if len(ties) > 1 and ordered[0] in ties and ordered == list(range(ordered[0], ordered[0] + n)):
            fail(f"{where}: windows {ties} share the smallest distance and you picked window {ordered[0]}; on ties take "
                 f"the earliest window (torch.argmin returns the first minimum): {expected}")
        if any(not 0 <= i < num_blocks for i in got):
            fail(f"{where}: your answer {got} names blocks outside 0..{num_blocks - 1}; expected {expected}")
        fail(f"{where}: you return {got}, expected {expected}: the smallest distance is distances[{start}] = "
             f"{float(distances[start]):.4g}, the window of blocks {start} .. {start + n - 1}")
    passed("choose_consecutive_blocks returns the n blocks of the window with the smallest distance")


# ---------------------------------------------------------------------------------------------
# 3. removing blocks
# ---------------------------------------------------------------------------------------------


def _layer_indices(model: nn.Module, adapter) -> list[list[int]]:
    """For every block, the ``layer_idx`` values of its modules (attention modules carry one)."""
    __tracebackhide__ = True
    return [[m.layer_idx for m in block.modules() if isinstance(getattr(m, "layer_idx", None), int)]
            for block in adapter.blocks(model)]


def _origin(block: nn.Module, originals: list[dict[str, torch.Tensor]]) -> int:
    """Which original block ``block`` is (by its weights; copies count), or -1."""
    __tracebackhide__ = True
    state = block.state_dict()
    for index, original in enumerate(originals):
        if state.keys() == original.keys() and all(torch.equal(state[k], original[k]) for k in original):
            return index
    return -1


def _ascending_deletion(num_blocks: int, indices: Sequence[int]) -> list[int] | None:
    """The blocks left by ``del blocks[i]`` for each index in increasing order (None if that crashes)."""
    __tracebackhide__ = True
    remaining = list(range(num_blocks))
    for index in sorted(indices):
        if index >= len(remaining):
            return None
        del remaining[index]
    return remaining


def _generate(model: nn.Module, prompt: torch.Tensor) -> torch.Tensor:
    __tracebackhide__ = True
    with torch.no_grad():
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False,
                              use_cache=True, pad_token_id=0, eos_token_id=None)


def _expect_value_error(fn: Callable, family: str, num_blocks: int, indices: list[int], why: str) -> None:
    __tracebackhide__ = True
    model = tiny_random_model(family, seed=53, num_blocks=num_blocks)
    adapter = adapter_for(model)
    call_text = f"remove_blocks(<tiny {family} with {num_blocks} blocks>, adapter, {indices})"
    raised, _ = call_expecting_value_error(
        fn, model, adapter, list(indices), name="remove_blocks", what=call_text,
        hint=f". {why}: check the indices first and raise ValueError with a message that says what is wrong")
    if not raised:
        fail(f"{call_text} returned without an error; {why}: check the indices first and raise ValueError")
    if len(adapter.blocks(model)) != num_blocks:
        fail(f"{call_text} raised ValueError but had already removed blocks ({len(adapter.blocks(model))} of "
             f"{num_blocks} left): check the indices BEFORE changing the model")


@graded_check
def check_remove_blocks(fn: Callable) -> None:
    """Check ``remove_blocks(model, adapter, indices)`` on tiny Llama (grouped-query attention), GPT-2 and OPT.

    The function must delete the blocks at ``indices`` (any order) from ``adapter.blocks(model)`` in
    place, keep the rest in their order, renumber every ``layer_idx`` in the surviving blocks 0, 1, ...,
    set ``model.config.num_hidden_layers`` to the new count and return the model (returning ``None``
    is accepted). The result must give the package's logits and generate the same tokens with a KV
    cache. Indices outside ``0 .. num_blocks - 1`` (negative ones included) and removing every
    block must raise ``ValueError`` before the model is changed.
    """
    __tracebackhide__ = True
    name = "remove_blocks"
    gen = generator(54)
    cases = (("llama", 4, [1, 2]), ("llama", 5, [3, 0]), ("gpt2", 4, [0, 2]), ("opt", 4, [3]), ("llama", 4, [0, 1, 2]))
    for family, num_blocks, indices in cases:
        model = tiny_random_model(family, seed=55, num_blocks=num_blocks)
        adapter = adapter_for(model)
        reference = package_remove_blocks(copy.deepcopy(model), adapter, indices)
        originals = [{k: v.clone() for k, v in block.state_dict().items()} for block in adapter.blocks(model)]
        keep = [i for i in range(num_blocks) if i not in indices]
        where = f"removing blocks {indices} from a tiny {family} with {num_blocks} blocks"
        prompt = torch.randint(0, 384, (2, 5), generator=gen)

        try:
            result = call(fn, model, adapter, list(indices), name=name, returns="the model (or None)")
        except CheckFailed as error:
            if "cannot assign" in str(error) and "child module" in str(error):
                raise CheckFailed(f"you assigned a plain Python list to the model's blocks: use nn.ModuleList\n"
                                  f"{where}: a model's blocks must stay an nn.ModuleList (a plain list would hide "
                                  "their weights from the model): delete entries in place (del blocks[i]) or "
                                  f"assign nn.ModuleList(kept_blocks).\n{error}") from None
            raise
        if result is None:
            result = model
        if not isinstance(result, nn.Module):
            fail(f"{where}: {name} should return the model (or None), got {type(result).__name__}")
        try:
            blocks = adapter.blocks(result)
        except ValueError:
            fail(f"{where}: the model has no nn.ModuleList of blocks at '{adapter.blocks_path}' any more. Delete "
                 f"entries of that ModuleList in place (del blocks[i]) or assign nn.ModuleList(kept_blocks), not a "
                 "plain Python list")

        got = [_origin(block, originals) for block in blocks]
        if got != keep:
            if sorted(got) == sorted(indices):
                fail(f"{where}: the model kept exactly the blocks to REMOVE ({got}); keep the others, {keep}")
            if got == _ascending_deletion(num_blocks, indices):
                fail(f"{where}: the model kept blocks {got} instead of {keep}. You deleted in increasing order: after "
                     f"`del blocks[{sorted(indices)[0]}]` every later block moves one place forward, so the next index "
                     "names a different block. Delete from the highest index down (sorted(indices, reverse=True)), "
                     "or build a new list of the blocks to keep.")
            if len(got) != len(keep):
                fail(f"{where}: the model has {len(got)} blocks afterwards, expected {len(keep)} (the original blocks "
                     f"{keep} in that order)")
            if sorted(got) == keep:
                fail(f"{where}: the right blocks remain but in the wrong order ({got}); keep them in their original "
                     f"order, {keep}")
            fail(f"{where}: the remaining blocks are the original blocks {got} (-1: a block whose weights changed); "
                 f"expected {keep}, untouched and in order")

        layer_indices = _layer_indices(result, adapter)
        stale = [(position, ids) for position, ids in enumerate(layer_indices) if any(i != position for i in ids)]
        if stale:
            position, ids = stale[0]
            try:
                _generate(result, prompt)
                consequence = ""
            except Exception as error:  # noqa: BLE001 - the consequence of the mistake, shown to the learner
                consequence = (f" Generating with a KV cache now fails with {type(error).__name__}: {error}, because the "
                               "cache has one slot per remaining block.")
            fail(f"{where}: block {position} (originally block {keep[position]}) still has layer_idx {ids[0]}; every "
                 f"module with a layer_idx attribute in the block that is now at position p must get layer_idx = p. "
                 f"Attention layers use it to find their slot in the KV cache.{consequence} Loop over "
                 "enumerate(blocks) and set module.layer_idx for every module in block.modules() that has one.")
        count = getattr(result.config, "num_hidden_layers", None)
        if count != len(keep):
            fail(f"{where}: model.config.num_hidden_layers is {count}, the model now has {len(keep)} blocks. Update it: "
                 "save_pretrained writes the config, and from_pretrained would rebuild "
                 f"{count} blocks and fill the missing ones with random weights; the KV cache is sized from it too.")

        with torch.no_grad():
            got_logits = result(input_ids=prompt, use_cache=False).logits
            expected_logits = reference(input_ids=prompt, use_cache=False).logits
        if not torch.allclose(got_logits, expected_logits, rtol=1e-5, atol=1e-5):
            fail(f"{where}: your model's logits differ from the package's remove_blocks result (max difference "
                 f"{float((got_logits - expected_logits).abs().max()):.3g}) although the same blocks remain: did "
                 "you change anything else in the model?")
        try:
            generated = _generate(result, prompt)
        except Exception as error:  # noqa: BLE001
            fail(f"{where}: generation with a KV cache failed after your removal: {type(error).__name__}: {error}")
        if not torch.equal(generated, _generate(reference, prompt)):
            fail(f"{where}: generation with a KV cache gives other tokens than the package's remove_blocks; the cache "
                 "slots (layer_idx) or config.num_hidden_layers are not consistent with the remaining blocks")

    _expect_value_error(fn, "llama", 4, [1, 4], "block 4 does not exist in a model with blocks 0..3")
    _expect_value_error(fn, "llama", 4, [-1], "negative indices are not block numbers (blocks are 0..3)")
    _expect_value_error(fn, "llama", 4, [0, 1, 2, 3], "removing every block leaves no model")
    passed("remove_blocks deletes the chosen blocks, renumbers layer_idx, updates num_hidden_layers, generates with a "
           "KV cache like the package, and rejects bad indices")
