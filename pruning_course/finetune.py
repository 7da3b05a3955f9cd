"""Prune while fine-tuning, on a laptop CPU: the loop behind movement pruning and gradual magnitude pruning.

The model is adapted to the training split of a corpus with the causal-LM loss while the chosen
linears are masked (:mod:`pruning_course.unstructured.movement`) and the sparsity follows the cubic
schedule. To fit a 2-core CPU only the top ``train_blocks`` decoder blocks are fine-tuned; the
lower blocks, the embeddings and the LM head are frozen. Frozen lower blocks always map a window
to the same hidden states, so they are run **once** per window (:func:`prepare_data` caches the
hidden states entering the first trained block) and every step only runs the trained blocks and
the head: lower blocks are swapped for a module that replays the cached states.

Everything a run needs to continue after an interruption (trained weights and scores, optimizer,
LR schedule, step, loss history, RNG state) is saved every ``checkpoint_every`` steps; a run
started with the same configuration and directory resumes from there and reproduces the
uninterrupted run exactly. The optimisation follows Sanh et al.'s code: AdamW, a separate
learning rate for the scores, linear LR warm-up and decay, gradient clipping at norm 1.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import InputError
from .architectures import ArchitectureAdapter
from .calibration import capture_block_inputs, replaying_lower_blocks
from .model_files import writing
from .data import calibration_windows
from .evaluate import PerplexityResult, eval_windows, summed_nll
from .unstructured.movement import (
    METHODS,
    MLP,
    _check_schedule,
    cubic_sparsity,
    fold_masks,
    mask_model,
    masked_linears,
    pruned_fraction,
    score_parameters,
    select_linears,
    set_pruning_state,
    soft_movement_penalty,
    soft_threshold_schedule,
    soft_threshold_for_sparsity,
)
from .masks import validate_sparsity

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass(frozen=True)
class FineTuneConfig:
    """One fine-pruning run.

    ``method``: ``"hard"``/``"soft"`` movement, ``"magnitude"`` (GMP) or ``None`` (dense fine-tuning).
    ``sparsity``: final sparsity of every pruned matrix. For soft movement it is optional and
    counts all pruned matrices together: ``None`` keeps the sparsity that the cubic ``tau`` schedule
    and the penalty reach (the paper's method); a value makes ``tau`` follow the cubic sparsity
    schedule instead (see :func:`finetune_prune`), so runs can be compared at equal sparsity.
    ``train_blocks``: how many top decoder blocks are fine-tuned; ``prune``: which of their linears
    are masked (``"mlp"``: the MLP's, as the adapter's layout names them; a tuple: parts of the
    block-relative name; ``None``: all).
    ``warmup_steps`` / ``cooldown_steps``: dense steps before pruning starts / steps at the final
    sparsity at the end (also the LR warm-up). ``soft_threshold`` / ``soft_lambda``: final ``tau`` on
    ``sigmoid(S)`` and final L1 weight. ``eval_windows``: validation windows of ``seqlen`` tokens.
    """

    method: str | None = "hard"
    sparsity: float | None = 0.5
    train_blocks: int = 2
    prune: tuple[str, ...] | str | None = MLP
    steps: int = 100
    batch_size: int = 4
    seqlen: int = 128
    lr: float = 1e-4
    scores_lr: float = 1e-2
    warmup_steps: int = 10
    cooldown_steps: int = 20
    soft_threshold: float = 0.1
    soft_lambda: float = 400.0
    score_init: float = 0.0
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    eval_windows: int | None = 32
    cache_lower: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.method not in (*METHODS, None):
            raise InputError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)} or None (dense)")
        if self.method in ("hard", "magnitude") and self.sparsity is None:
            raise InputError(f"{self.method} pruning needs a final sparsity in (0, 1), e.g. 0.5")
        if self.method is not None and self.sparsity is not None:
            validate_sparsity(self.sparsity)
        for name in ("steps", "batch_size", "train_blocks"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.seqlen < 2:
            raise InputError(f"seqlen must be at least 2 tokens, got {self.seqlen}")
        _check_schedule(0, self.steps, self.warmup_steps, self.cooldown_steps)
        if self.method == "soft":
            soft_threshold_schedule(0, self.steps, self.soft_threshold, self.soft_lambda)
        if self.lr < 0 or self.scores_lr < 0:
            raise InputError("learning rates must be >= 0")


@dataclass
class FineTuneData:
    """Training and validation windows and, when lower blocks are frozen, their cached outputs.

    ``train_hidden[i]`` / ``val_hidden[i]`` are the hidden states entering decoder block
    ``first_block`` for window ``i`` (``None`` without caching). Shared by every run with the same
    base model, ``seqlen``, ``train_blocks`` and window counts (the cache does not depend on the method).
    """

    train_windows: torch.Tensor
    val_windows: torch.Tensor
    first_block: int
    train_hidden: torch.Tensor | None = None
    val_hidden: torch.Tensor | None = None
    cache_seconds: float = 0.0


@dataclass
class FineTuneResult:
    config: dict
    history: list[dict]
    validation: PerplexityResult | None
    pruned_fraction: float | None  # of all pruned matrices together, after folding
    matrix_sparsity: dict[str, float] = field(default_factory=dict)  # each pruned matrix's own
    masks: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    steps_run: int = 0
    resumed_from: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    seconds_per_step: float = 0.0

    def summary(self) -> dict:
        """A JSON-able record (no masks, no per-step history)."""
        return {
            "method": self.config["method"], "target_sparsity": self.config["sparsity"],
            "pruned_fraction": self.pruned_fraction,
            "matrix_sparsity_range": [min(self.matrix_sparsity.values()), max(self.matrix_sparsity.values())]
            if self.matrix_sparsity else None,
            "val_ppl": None if self.validation is None else self.validation.ppl,
            "final_train_loss": self.history[-1]["loss"] if self.history else None,
            "steps": self.config["steps"], "seconds": round(self.seconds, 1),
            "seconds_per_step": round(self.seconds_per_step, 3),
        }


# ---------------------------------------------------------------------------------------------
# Cached lower blocks
# ---------------------------------------------------------------------------------------------


def cache_block_inputs(
    model: nn.Module, adapter: ArchitectureAdapter, windows: torch.Tensor, block: int,
    *, batch_size: int = 8, progress: bool = True,
) -> torch.Tensor:
    """Hidden states entering decoder block ``block`` for each window: an ``(n, seqlen, hidden)`` tensor
    (the calibration engine's :func:`~pruning_course.calibration.capture_block_inputs`, in eval mode)."""
    was_training = model.training
    model.eval()
    try:
        captured = capture_block_inputs(model, adapter, windows, block=block, batch_size=batch_size,
                                        device=next(model.parameters()).device, progress=progress)
    finally:
        model.train(was_training)
    return torch.cat([hidden.detach().clone() for hidden, _ in captured])


def prepare_data(
    model: nn.Module, adapter: ArchitectureAdapter, splits: dict[str, torch.Tensor], config: FineTuneConfig,
    *, progress: bool = True,
) -> FineTuneData:
    """Draw ``steps * batch_size`` random training windows and the validation windows; cache lower-block outputs.

    Windows come from ``splits["train"]`` (:func:`pruning_course.data.calibration_windows`, seeded)
    and ``splits["validation"]`` (non-overlapping, the perplexity protocol of
    :mod:`pruning_course.evaluate`).
    """
    n_blocks = len(adapter.blocks(model))
    if config.train_blocks > n_blocks:
        raise InputError(f"train_blocks={config.train_blocks} but the model has only {n_blocks} decoder blocks")
    first_block = n_blocks - config.train_blocks
    train = calibration_windows(splits["train"], config.steps * config.batch_size, config.seqlen, seed=config.seed)
    val = eval_windows(splits["validation"], config.seqlen, config.eval_windows)
    data = FineTuneData(train_windows=train, val_windows=val, first_block=first_block)
    if config.cache_lower and first_block > 0:
        start = time.perf_counter()
        data.train_hidden = cache_block_inputs(model, adapter, train, first_block, progress=progress)
        data.val_hidden = cache_block_inputs(model, adapter, val, first_block, progress=progress)
        data.cache_seconds = time.perf_counter() - start
    return data


def _forward(model, batch, hidden, source):
    if source is not None:
        source["hidden"] = hidden
    return model(input_ids=batch, use_cache=False)


@torch.no_grad()
def cached_perplexity(
    model: nn.Module, adapter: ArchitectureAdapter, data: FineTuneData, *, batch_size: int = 4, progress: bool = True
) -> PerplexityResult:
    """Validation perplexity on ``data.val_windows`` with the protocol of :func:`pruning_course.evaluate.perplexity`.

    With cached lower-block outputs only the top blocks and the head run (same numbers as the full model).
    """
    was_training = model.training
    model.eval()
    windows, total_nll = data.val_windows, 0.0
    use_cache = data.val_hidden is not None
    with replaying_lower_blocks(model, adapter, data.first_block if use_cache else 0) as source:
        for start in tqdm(range(0, len(windows), batch_size), desc="validation", unit="batch", disable=not progress):
            batch = windows[start : start + batch_size]
            hidden = data.val_hidden[start : start + batch_size] if use_cache else None
            total_nll += summed_nll(_forward(model, batch, hidden, source if use_cache else None).logits, batch)
    model.train(was_training)
    return PerplexityResult.of_windows(total_nll, windows)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def _lr_factor(step: int, config: FineTuneConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then linear decay towards 0 at ``steps``."""
    if step < config.warmup_steps:
        return (step + 1) / (config.warmup_steps + 1)
    return (config.steps - step) / max(config.steps - config.warmup_steps, 1)


def _schedule(step: int, config: FineTuneConfig) -> dict:
    """The pruning state at ``step``: target sparsity, soft threshold and L1 weight."""
    c = config
    if c.method is None:
        return {"sparsity": None, "threshold": None, "lambda": 0.0}
    if c.method == "soft" and c.sparsity is None:  # Sanh et al.: tau on a cubic schedule, lambda grows with it
        tau, lam = soft_threshold_schedule(step, c.steps, c.soft_threshold, c.soft_lambda, 0.0, c.warmup_steps, c.cooldown_steps)
        return {"sparsity": None, "threshold": tau, "lambda": lam}
    if c.method == "soft":  # tau follows the sparsity schedule (set from the scores each step), lambda grows with it
        target = cubic_sparsity(step, c.steps, c.sparsity, 0.0, c.warmup_steps, c.cooldown_steps)
        return {"sparsity": target, "threshold": None, "lambda": c.soft_lambda * target / c.sparsity}
    return {"sparsity": cubic_sparsity(step, c.steps, c.sparsity, 0.0, c.warmup_steps, c.cooldown_steps),
            "threshold": None, "lambda": 0.0}


def _checkpoint_state(model, optimizer, scheduler, step, history, config) -> dict:
    return {
        "step": step,
        "config": asdict(config),
        "trainable": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "history": list(history),
        "rng": torch.get_rng_state(),
    }


def save_checkpoint(directory: Path, state: dict) -> Path:
    """Write ``state`` atomically (a crash while saving leaves the previous checkpoint intact)."""
    path = Path(directory) / CHECKPOINT_NAME
    with writing(path) as partial:
        torch.save(state, partial)
    return path


def load_checkpoint(directory: Path, config: FineTuneConfig) -> dict | None:
    """The checkpoint in ``directory`` if there is one; refuses one written by a different configuration."""
    path = Path(directory) / CHECKPOINT_NAME
    if not path.exists():
        return None
    state = torch.load(path, weights_only=False)
    saved = state["config"]
    if isinstance(saved["prune"], list):
        saved["prune"] = tuple(saved["prune"])
    if saved != asdict(config):
        changed = sorted(k for k in saved if saved[k] != asdict(config).get(k))
        raise InputError(
            f"{path} was written by a run with a different configuration (differs in {', '.join(changed)}); "
            "use another checkpoint directory or delete it to start over"
        )
    return state


def finetune_prune(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    data: FineTuneData | dict[str, torch.Tensor],
    config: FineTuneConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 50,
    stop_after: int | None = None,
    fold: bool = True,
    evaluate: bool = True,
    progress: bool = True,
) -> FineTuneResult:
    """Fine-tune the top ``config.train_blocks`` blocks of ``model`` while pruning the chosen linears.

    Per step ``t``: set the masks' state from the schedule (cubic sparsity ``s_t`` for hard movement
    and GMP; ``tau_t``, ``lambda_t`` for soft movement), run a batch of ``batch_size`` training
    windows, take the causal-LM loss (+ ``lambda_t * mean sigmoid(S)`` for soft movement), clip and step.

    Soft movement with a target ``sparsity`` (a course adaptation: the paper reaches a target by
    tuning ``lambda`` over many runs) sets ``tau_t`` each step to the value whose mask
    ``sigmoid(S) > tau_t`` removes ``s_t`` of all its scores together
    (:func:`~pruning_course.unstructured.movement.soft_threshold_for_sparsity`), with
    ``lambda_t = soft_lambda * s_t / sparsity``. It keeps what distinguishes it from hard movement,
    one threshold for all matrices (each matrix finds its own sparsity, see ``matrix_sparsity``)
    and the L1 pull on the scores, while following the same schedule as the other methods.

    ``data``: :func:`prepare_data`'s result (share it between runs) or token splits
    ``{"train", "validation"}``. ``checkpoint_dir``: save every ``checkpoint_every`` steps and resume
    from the checkpoint found there. ``stop_after``: stop after that global step without
    evaluating (an interruption, for demonstrations and tests). With ``fold`` the masked layers
    are folded into plain ones (:func:`fold_masks`) before the validation perplexity; without it,
    the model is returned still masked. The model is modified in place.
    """
    start_time = time.perf_counter()
    if isinstance(data, dict):
        data = prepare_data(model, adapter, data, config, progress=progress)
    blocks = adapter.blocks(model)
    first_block = len(blocks) - config.train_blocks
    if data.first_block != first_block or data.train_windows.shape != (config.steps * config.batch_size, config.seqlen):
        raise InputError("data was prepared for another configuration (train_blocks, steps, batch_size or seqlen): "
                         "call prepare_data with this config")
    if checkpoint_every < 1:
        raise InputError(f"checkpoint_every must be at least 1, got {checkpoint_every}")

    if config.method is not None:
        names = select_linears(model, adapter, range(first_block, len(blocks)), config.prune)
        mask_model(model, adapter, names, config.method, score_init=config.score_init)

    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    weights = []
    for block in blocks[first_block:]:
        for name, p in block.named_parameters():
            if not name.endswith("scores"):
                weights.append(p)
    scores = score_parameters(model)
    for p in weights + scores:
        p.requires_grad_(True)
    groups = [{"params": weights, "lr": config.lr, "weight_decay": config.weight_decay}]
    if scores:
        groups.append({"params": scores, "lr": config.scores_lr, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, config))

    torch.manual_seed(config.seed)
    step, history = 0, []
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    state = load_checkpoint(checkpoint_dir, config) if checkpoint_dir is not None else None
    if state is not None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in state["trainable"].items():
                params[name].copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        step, history = state["step"], list(state["history"])
    resumed_from = step

    model.eval()
    for block in blocks[first_block:]:
        block.train()
    use_cache = data.train_hidden is not None
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    loop_start = time.perf_counter()
    bar = tqdm(total=config.steps, initial=step, desc=f"fine-pruning ({config.method or 'dense'})", unit="step",
               disable=not progress)
    with replaying_lower_blocks(model, adapter, first_block if use_cache else 0) as source:
        while step < end:
            sched = _schedule(step, config)
            if config.method == "soft":
                if sched["threshold"] is None:
                    sched["threshold"] = soft_threshold_for_sparsity(model, sched["sparsity"])
                set_pruning_state(model, None, sched["threshold"])
            elif config.method is not None:
                set_pruning_state(model, sched["sparsity"])
            rows = slice(step * config.batch_size, (step + 1) * config.batch_size)
            batch = data.train_windows[rows]
            source["hidden"] = data.train_hidden[rows] if use_cache else None
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
            penalty = soft_movement_penalty(model) if config.method == "soft" else None
            total = loss + sched["lambda"] * penalty if penalty is not None else loss
            total.backward()
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], config.max_grad_norm)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            layers = masked_linears(model).values()
            kept = sum(m.last_kept_fraction * m.linear.weight.numel() for m in layers)
            size = sum(m.linear.weight.numel() for m in layers)
            history.append({
                "step": step, "loss": float(loss.detach()), "penalty": None if penalty is None else float(penalty.detach()),
                "target_sparsity": sched["sparsity"], "threshold": sched["threshold"], "lambda": sched["lambda"],
                "mask_sparsity": 1.0 - kept / size if size else 0.0, "lr": lr,
            })
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", sparsity=f"{history[-1]['mask_sparsity']:.2f}")
            if checkpoint_dir is not None and step % checkpoint_every == 0:
                save_checkpoint(checkpoint_dir, _checkpoint_state(model, optimizer, scheduler, step, history, config))
    bar.close()
    steps_run = step - resumed_from
    seconds_per_step = (time.perf_counter() - loop_start) / max(steps_run, 1)

    for name, p in model.named_parameters():
        p.requires_grad_(requires_grad.get(name, False))
    model.eval()
    result = FineTuneResult(config=asdict(config), history=history, validation=None, pruned_fraction=None,
                            steps_run=steps_run, resumed_from=resumed_from,
                            seconds_per_step=seconds_per_step)
    if step < config.steps:
        result.interrupted = True
        result.seconds = time.perf_counter() - start_time
        return result

    if config.method is not None and fold:
        if config.method == "soft" and config.sparsity is not None:  # the exact total (ties aside, the last mask)
            result.masks = fold_masks(model, config.sparsity, scope="global")
        else:
            result.masks = fold_masks(model)
        result.pruned_fraction = pruned_fraction(result.masks)
        result.matrix_sparsity = {name: pruned_fraction({name: m}) for name, m in result.masks.items()}
    if evaluate:
        result.validation = cached_perplexity(model, adapter, data, progress=progress)
    result.seconds = time.perf_counter() - start_time
    return result
