"""Knowledge-distillation recovery: fine-tune a pruned model to imitate the dense one.

One-shot pruning leaves a gap to the dense model; a short fine-tune closes part of it. Distillation
(Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network", arXiv:1503.02531)
trains the pruned *student* to match the dense *teacher*'s next-token distributions, which carry far
more signal per token than the one-hot next token. Pruned LLMs are recovered this way in
Sheared-LLaMA (Xia et al. 2024) and Minitron (Muralidharan et al. 2024, "Compact Language Models via
Pruning and Knowledge Distillation", which uses the logit KL alone).

Loss (Hinton et al. 2015, section 2), per token position, with temperature ``T`` softening both
distributions ``p^T = softmax(z / T)``::

    L = alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(student logits, next token)

The ``T^2`` keeps the gradient scale of the soft term independent of ``T`` (the soft gradients
scale as ``1/T^2``). ``alpha = 1`` is pure distillation.

Pruned weights must stay pruned: :func:`distill` masks their gradients (with zero gradients and zero
moment estimates, Adam/AdamW leaves a zero weight exactly zero, weight decay included) and re-applies
the keep-masks after every optimizer step. The masks can be read off the weights' zeros
(:func:`masks_from_zeros`), so a model saved after pruning can be distilled without its masks.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError
from .architectures import ArchitectureAdapter, adapter_for, apply_mask, as_stored, weight_matrix
from .evaluate import eval_windows

TRAINABLE = ("linears", "all")


def check_kd_options(temperature: float, alpha: float, has_labels: bool = True) -> None:
    """Raise a ``ValueError`` saying what is wrong with a temperature / alpha choice."""
    if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
        raise InputError(f"temperature must be a positive number (1 = the models' own distributions), got {temperature!r}")
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise InputError(f"alpha (weight of the distillation term) must be in [0, 1], got {alpha!r}")
    if alpha < 1.0 and not has_labels:
        raise InputError(f"alpha={alpha} mixes in the cross-entropy on the next tokens: pass labels (or use alpha=1)")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 1.0,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Distillation loss of Hinton et al. (2015), averaged over token positions.

    ``student_logits`` and ``teacher_logits``: ``(..., vocab)`` with the same shape. Returns
    ``alpha * T^2 * mean_positions KL(softmax(t / T) || softmax(s / T))`` plus, when ``alpha < 1``,
    ``(1 - alpha) * CE(s, labels)`` where ``labels`` (``(...)``, aligned with the logits: the target of
    position ``i`` at ``labels[..., i]``) holds the next tokens and ``ignore_index`` marks positions
    without one. Computed in float32; the teacher side carries no gradient.
    """
    if student_logits.shape != teacher_logits.shape:
        raise InputError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ in shape; "
            "the two models must see the same tokens and share one vocabulary (tokenizer)"
        )
    check_kd_options(temperature, alpha, has_labels=labels is not None)
    vocab = student_logits.shape[-1]
    s = student_logits.reshape(-1, vocab).float()
    loss = student_logits.new_zeros((), dtype=torch.float32)
    if alpha > 0:
        log_p_student = F.log_softmax(s / temperature, dim=-1)
        log_p_teacher = F.log_softmax(teacher_logits.reshape(-1, vocab).detach().float() / temperature, dim=-1)
        # KL(p_t || p_s) = sum_v p_t (log p_t - log p_s), averaged over positions ("batchmean")
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
        loss = loss + alpha * temperature**2 * kl
    if alpha < 1:
        if labels.shape != student_logits.shape[:-1]:
            raise InputError(f"labels must have shape {tuple(student_logits.shape[:-1])} (one target per position), got {tuple(labels.shape)}")
        loss = loss + (1 - alpha) * F.cross_entropy(s, labels.reshape(-1), ignore_index=ignore_index)
    return loss


# ---------------------------------------------------------------------------------------------
# Keep-masks of a pruned model
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def masks_from_zeros(model: nn.Module, adapter: ArchitectureAdapter) -> dict[str, torch.Tensor]:
    """Keep-masks (``True`` = keep) of every prunable linear, read off its non-zero weights.

    Keys are full linear names as in ``adapter.named_linears``; masks are ``(out, in)`` like
    :func:`~pruning_course.architectures.weight_matrix`.
    """
    return {name: weight_matrix(module) != 0 for name, module in adapter.named_linears(model).items()}


def _check_masks(model: nn.Module, adapter: ArchitectureAdapter, masks: dict[str, torch.Tensor]) -> dict[str, nn.Module]:
    linears = adapter.named_linears(model)
    unknown = sorted(set(masks) - set(linears))
    if unknown:
        raise InputError(f"keep-masks name {len(unknown)} layer(s) the model does not have, e.g. {unknown[0]!r}; "
                         "keys must be full linear names as in adapter.named_linears(model)")
    for name, mask in masks.items():
        shape = tuple(weight_matrix(linears[name]).shape)
        if tuple(mask.shape) != shape:
            raise InputError(f"the keep-mask of {name} has shape {tuple(mask.shape)}, the weight is {shape} (out, in)")
        if mask.dtype != torch.bool:
            raise InputError(f"the keep-mask of {name} must be a bool tensor (True = keep), got {mask.dtype}")
    return {name: linears[name] for name in masks}


def _storage(module: nn.Module, mask: torch.Tensor) -> torch.Tensor:
    """The ``(out, in)`` mask in the layout the module stores its weight."""
    return as_stored(module, mask).to(module.weight.device)


@torch.no_grad()
def apply_keep_masks(model: nn.Module, adapter: ArchitectureAdapter, masks: dict[str, torch.Tensor]) -> None:
    """Zero every weight whose keep-mask is ``False`` (masks by full linear name, ``(out, in)``)."""
    for name, module in _check_masks(model, adapter, masks).items():
        apply_mask(module, masks[name])


# ---------------------------------------------------------------------------------------------
# Measuring and training
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def mean_kl_to_teacher(
    student: nn.Module,
    teacher: nn.Module,
    ids: torch.Tensor,
    seqlen: int,
    *,
    max_windows: int | None = None,
    batch_size: int = 4,
    temperature: float = 1.0,
) -> float:
    """Mean per-token ``KL(teacher || student)`` on non-overlapping windows of the 1-D ``ids``.

    Uses the windows of :func:`pruning_course.evaluate.perplexity` (first ``max_windows`` of them).
    """
    windows = eval_windows(ids, seqlen, max_windows)
    device = next(student.parameters()).device
    modes = student.training, teacher.training
    student.eval()
    teacher.eval()
    total, positions = 0.0, 0
    for batch in windows.split(batch_size):
        batch = batch.to(device)
        s = student(input_ids=batch, use_cache=False).logits
        t = teacher(input_ids=batch.to(next(teacher.parameters()).device), use_cache=False).logits.to(device)
        n = batch.numel()
        total += float(kd_loss(s, t, temperature=temperature)) / temperature**2 * n
        positions += n
    student.train(modes[0])
    teacher.train(modes[1])
    return total / positions


def random_windows(ids: torch.Tensor, n: int, seqlen: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` windows of ``seqlen`` consecutive tokens at random starts of the 1-D ``ids`` (one training batch)."""
    starts = torch.randint(0, ids.numel() - seqlen + 1, (n,), generator=generator)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])


def trainable_parameters(model: nn.Module, adapter: ArchitectureAdapter, which: str = "linears") -> list[nn.Parameter]:
    """Parameters to fine-tune: ``"linears"`` (weights and biases of the prunable linears) or ``"all"``."""
    if which not in TRAINABLE:
        raise InputError(f"unknown trainable set {which!r}; choose one of: {', '.join(TRAINABLE)}")
    if which == "all":
        return list(model.parameters())
    params = []
    for module in adapter.named_linears(model).values():
        params += [p for p in (module.weight, module.bias) if p is not None]
    return params


@dataclass
class DistillHistory:
    """What :func:`distill` did: the loss of every step and the time it took."""

    loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # wall time of each step (teacher + student)
    tokens_per_step: int = 0
    trainable_params: int = 0
    masked_layers: int = 0

    @property
    def seconds_per_step(self) -> float:
        return sum(self.seconds) / len(self.seconds) if self.seconds else float("nan")

    def as_dict(self) -> dict:
        return {**asdict(self), "seconds_per_step": self.seconds_per_step}


def distill(
    student: nn.Module,
    teacher: nn.Module,
    train_ids: torch.Tensor,
    steps: int = 100,
    seqlen: int = 256,
    batch_size: int = 4,
    lr: float = 5e-5,
    *,
    temperature: float = 2.0,
    alpha: float = 1.0,
    adapter: ArchitectureAdapter | None = None,
    keep_masks: dict[str, torch.Tensor] | None = None,
    trainable: str = "linears",
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> DistillHistory:
    """Fine-tune ``student`` in place to match ``teacher``'s logits (:func:`kd_loss`); return the history.

    Each step draws ``batch_size`` random windows of ``seqlen`` tokens from the 1-D ``train_ids``
    (a fresh generator seeded with ``seed``), computes the teacher's logits under ``no_grad``, and
    takes one AdamW step (constant ``lr``, gradients clipped to ``max_grad_norm``) on the
    ``trainable`` parameters (``"linears"``: the prunable linears only, which saves the optimizer
    state of the embeddings; ``"all"``). The loss is taken on positions ``0 .. seqlen-2`` so that the
    cross-entropy term (``alpha < 1``) has a next token at each.

    ``keep_masks`` (full linear name -> ``(out, in)`` bool, ``True`` = keep) hold pruned weights at
    exactly zero; ``None`` reads them off the student's zeros (:func:`masks_from_zeros`), ``{}``
    disables masking. ``adapter`` defaults to ``adapter_for(student)``. The teacher is not changed.
    """
    for name, value in (("steps", steps), ("seqlen", seqlen), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < (2 if name == "seqlen" else 1):
            raise InputError(f"{name} must be an integer of at least {2 if name == 'seqlen' else 1}, got {value!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise InputError(f"lr must be a positive learning rate (e.g. 5e-5), got {lr!r}")
    if train_ids.dim() != 1:
        raise InputError(f"train_ids must be a 1-D tensor of token ids (a tokenized split), got shape {tuple(train_ids.shape)}")
    if train_ids.numel() < seqlen:
        raise InputError(f"train_ids has {train_ids.numel()} tokens, fewer than one window of seqlen={seqlen}")
    if student is teacher:
        raise InputError("student and teacher are the same module: distil a pruned copy (copy.deepcopy before pruning)")
    check_kd_options(temperature, alpha)
    adapter = adapter or adapter_for(student)
    masks = masks_from_zeros(student, adapter) if keep_masks is None else keep_masks
    masked = {name: (module, _storage(module, masks[name])) for name, module in _check_masks(student, adapter, masks).items()}
    params = trainable_parameters(student, adapter, trainable)

    device = next(student.parameters()).device
    teacher_device = next(teacher.parameters()).device
    frozen = {p: p.requires_grad for p in student.parameters()}
    trainable_ids = {id(p) for p in params}
    for p in student.parameters():
        p.requires_grad_(id(p) in trainable_ids)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    history = DistillHistory(tokens_per_step=batch_size * seqlen, trainable_params=sum(p.numel() for p in params),
                             masked_layers=len(masked))
    modes = student.training, teacher.training
    teacher.eval()
    student.train()
    from tqdm.auto import tqdm

    bar = tqdm(range(steps), desc="distilling", unit="step", disable=not progress)
    try:
        for _ in bar:
            start = time.perf_counter()
            batch = random_windows(train_ids, batch_size, seqlen, generator)
            with torch.no_grad():
                teacher_logits = teacher(input_ids=batch.to(teacher_device), use_cache=False).logits[:, :-1].to(device)
            batch = batch.to(device)
            student_logits = student(input_ids=batch, use_cache=False).logits[:, :-1]
            loss = kd_loss(student_logits, teacher_logits, temperature, alpha, labels=batch[:, 1:])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for module, mask in masked.values():
                if module.weight.grad is not None:
                    module.weight.grad.mul_(mask)
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            with torch.no_grad():
                for module, mask in masked.values():
                    module.weight.mul_(mask)
            del student_logits, teacher_logits
            history.loss.append(float(loss.detach()))
            history.seconds.append(time.perf_counter() - start)
            bar.set_postfix(loss=f"{history.loss[-1]:.4f}")
    finally:
        for p, requires_grad in frozen.items():
            p.requires_grad_(requires_grad)
        student.train(modes[0])
        teacher.train(modes[1])
    return history
