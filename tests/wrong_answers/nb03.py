"""Notebook 03 (Wanda): collect_act_sq_norms, wanda_scores, wanda_mask, relative_output_error, nm_mask."""

import torch

from pruning_course.checks.wanda import (
    check_activation_norm_hook,
    check_nm_mask,
    check_relative_output_error,
    check_wanda_mask,
    check_wanda_scores,
)
from pruning_course.masks import per_matrix_mask

from . import CRASH, Wrong, crashes


def collector(update=lambda acc, x: acc + x.pow(2).sum(dim=0), finish=lambda acc, tokens: acc / max(tokens, 1),
              use_output=False, remove=True, runs=1):
    """A hook-based collector: ``update(acc, x_flat) -> acc`` per call, ``finish(acc, tokens)`` at the end."""
    def collect_act_sq_norms(linear, model, batches):
        state = {"acc": torch.zeros(linear.weight.shape[1]), "tokens": 0}

        def hook(_module, args, output):
            x = (output if use_output else args[0]).detach()
            x = x.reshape(-1, x.shape[-1]).float()
            if x.shape[-1] != state["acc"].shape[0]:
                state["acc"] = torch.zeros(x.shape[-1])
            state["acc"] = update(state["acc"], x)
            state["tokens"] += x.shape[0]

        handle = linear.register_forward_hook(hook)
        try:
            with torch.no_grad():
                for batch in batches:
                    for _ in range(runs):
                        model(batch)
        finally:
            if remove:
                handle.remove()
        return finish(state["acc"], state["tokens"])
    return collect_act_sq_norms


def wanda_scores(weight, act_sq_norm):
    return weight.abs() * act_sq_norm.sqrt().unsqueeze(0)


def wanda_mask(scores, sparsity):
    k = int(scores.shape[1] * sparsity)
    mask = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        mask.scatter_(1, torch.topk(scores, k, dim=1, largest=False).indices, False)
    return mask


def relative_output_error(x, weight, pruned_weight):
    x = x.double()
    dense = x @ weight.double().T
    return float((dense - x @ pruned_weight.double().T).norm() / dense.norm())


def nm_mask(scores, n, m):
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"{n}:{m} needs a width that is a multiple of {m}, got {cols}")
    groups = scores.reshape(rows, cols // m, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, torch.topk(groups, n, dim=2).indices, True)
    return mask.reshape(rows, cols)


REFERENCES = {check_activation_norm_hook: collector(), check_wanda_scores: wanda_scores, check_wanda_mask: wanda_mask,
              check_relative_output_error: relative_output_error, check_nm_mask: nm_mask}


def _per_batch_means():
    means = []

    def update(acc, x):
        means.append(x.pow(2).mean(dim=0))
        return acc + x.pow(2).mean(dim=0)
    return collector(update, finish=lambda acc, tokens: acc)


def _per_token(linear, model, batches):
    values = []
    handle = linear.register_forward_hook(lambda _m, args, _o: values.append(args[0].detach().pow(2).sum(-1).reshape(-1)))
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        handle.remove()
    return torch.cat(values)


def _mask_removing(r_of):
    def learner(scores, sparsity):
        r = r_of(scores.shape[1], sparsity)
        mask = torch.ones_like(scores, dtype=torch.bool)
        if r > 0:
            mask.scatter_(1, torch.topk(scores, r, dim=1, largest=False).indices, False)
        return mask
    return learner


def _kthvalue_no_k0(scores, sparsity):
    k = int(scores.shape[1] * sparsity)
    return scores > torch.kthvalue(scores, k, dim=1, keepdim=True).values


def _error(body):
    def learner(x, weight, pruned):
        x, w, p = x.double(), weight.double(), pruned.double()
        return float(body(x, w, p))
    return learner


def _nm(group_view):
    def learner(scores, n, m):
        rows, cols = scores.shape
        if cols % m:
            raise ValueError("width")
        return group_view(scores, n, m, rows, cols)
    return learner


def _strided(scores, n, m, rows, cols):
    g = scores.reshape(rows, m, cols // m).transpose(1, 2)
    mask = torch.zeros_like(g, dtype=torch.bool).scatter_(2, torch.topk(g, n, dim=2).indices, True)
    return mask.transpose(1, 2).reshape(rows, cols)


def _no_width_check(scores, n, m):
    rows, cols = scores.shape
    usable = cols - cols % m
    mask = torch.ones_like(scores, dtype=torch.bool)
    mask[:, :usable] = nm_mask(scores[:, :usable], n, m)
    return mask


WRONG = [
    Wrong(check_activation_norm_hook, "norms, not squared norms", collector(finish=lambda acc, t: (acc / t).sqrt()),
          r"norms \|\|X_j\|\|"),
    Wrong(check_activation_norm_hook, "per-batch norms added", collector(lambda acc, x: acc + x.pow(2).sum(0).sqrt(),
                                                                         finish=lambda acc, t: acc),
          r"norm \(sqrt\) per batch"),
    Wrong(check_activation_norm_hook, "mean of per-batch means", _per_batch_means(), r"average each batch separately"),
    Wrong(check_activation_norm_hook, "overwrites instead of adding", collector(lambda acc, x: x.pow(2).sum(0)),
          r"only the last batch"),
    Wrong(check_activation_norm_hook, "the layer's output", collector(use_output=True), r"OUTPUT"),
    Wrong(check_activation_norm_hook, "hook never removed", collector(remove=False), r"hook registered"),
    Wrong(check_activation_norm_hook, "runs every batch twice", collector(runs=2), r"ran \d+ times for \d+ batches"),
    Wrong(check_activation_norm_hook, "reduced over features (one per token)",
          _per_token, r"one value per token"),
    Wrong(check_activation_norm_hook, "never runs the model", lambda linear, model, batches: torch.ones(linear.in_features),
          r"never called"),
    Wrong(check_activation_norm_hook, "crashes inside torch", crashes(), CRASH),

    Wrong(check_wanda_scores, "|W| only: forgot the activations", lambda w, a: w.abs(), r"forgot the activations"),
    Wrong(check_wanda_scores, "no square root", lambda w, a: w.abs() * a, r"take its square root"),
    Wrong(check_wanda_scores, "signed W", lambda w, a: w * a.sqrt(), r"keep the sign of W"),
    Wrong(check_wanda_scores, "W^2", lambda w, a: w**2 * a.sqrt(), r"W\^2 where the score has \|W\|"),
    Wrong(check_wanda_scores, "square of the score", lambda w, a: w**2 * a, r"SQUARE of Wanda's score"),
    Wrong(check_wanda_scores, "wrong axis (unsqueeze(1))",
          lambda w, a: w.abs() * a.sqrt().unsqueeze(1) if w.shape[0] == w.shape[1] else w.abs() * a.sqrt()[: w.shape[0]].unsqueeze(1),
          r"wrong dimension|one entry per INPUT feature"),
    Wrong(check_wanda_scores, "divides by the norm", lambda w, a: w.abs() / a.sqrt(), r"you divide by the norm"),
    Wrong(check_wanda_scores, "abs_() in place", lambda w, a: w.abs_() * a.sqrt(), r"in place"),
    Wrong(check_wanda_scores, "sqrt taken twice", lambda w, a: w.abs() * a.sqrt().sqrt(), r"square root twice"),
    Wrong(check_wanda_scores, "crashes inside torch", crashes(), CRASH),

    Wrong(check_wanda_mask, "one threshold for the whole matrix", lambda s, p: per_matrix_mask(s, p),
          r"one threshold for the whole matrix"),
    Wrong(check_wanda_mask, "inverted", lambda s, p: ~wanda_mask(s, p), r"inverted"),
    Wrong(check_wanda_mask, "ranked per column", lambda s, p: wanda_mask(s.t().contiguous(), p).t(), r"COLUMN"),
    # at sparsity 0.5 removing the highest IS the inverted mask: either message names it
    Wrong(check_wanda_mask, "removes the highest", lambda s, p: wanda_mask(-s, p),
          r"removes the HIGHEST|inverted: it is True for the LOWEST"),
    Wrong(check_wanda_mask, "off by one (k + 1)", _mask_removing(lambda n, p: int(n * p) + 1), r"off by one"),
    Wrong(check_wanda_mask, "keeps k instead of removing k", _mask_removing(lambda n, p: n - int(n * p)),
          r"sparsity is the fraction REMOVED"),
    Wrong(check_wanda_mask, "float mask", lambda s, p: wanda_mask(s, p).float(), r"boolean keep-mask"),
    Wrong(check_wanda_mask, "k = 0 not handled", _kthvalue_no_k0, r"k = 0 is not handled"),
    Wrong(check_wanda_mask, "ceil instead of floor", _mask_removing(lambda n, p: -int(-n * p // 1)), r"off by one(.|\n)*ceil instead of floor"),
    Wrong(check_wanda_mask, "sorts the scores in place", lambda s, p: wanda_mask(s.sort_(dim=1).values, p),
          r"in place"),
    Wrong(check_wanda_mask, "crashes inside torch", crashes(), CRASH),

    Wrong(check_relative_output_error, "absolute error", _error(lambda x, w, p: (x @ w.T - x @ p.T).norm()),
          r"absolute error"),
    Wrong(check_relative_output_error, "squared norms",
          _error(lambda x, w, p: ((x @ w.T - x @ p.T).norm() / (x @ w.T).norm()) ** 2), r"SQUARED norms"),
    Wrong(check_relative_output_error, "weight error", _error(lambda x, w, p: (w - p).norm() / w.norm()),
          r"error of the WEIGHTS"),
    Wrong(check_relative_output_error, "mean per-token error",
          _error(lambda x, w, p: ((x @ w.T - x @ p.T).norm(dim=1) / (x @ w.T).norm(dim=1)).mean()), r"per-token"),
    Wrong(check_relative_output_error, "divides by the pruned output",
          _error(lambda x, w, p: (x @ w.T - x @ p.T).norm() / (x @ p.T).norm()), r"norm of the PRUNED output"),
    Wrong(check_relative_output_error, "a tensor, not a Python float",
          lambda x, w, p: (x @ w.T - x @ p.T).norm() / (x @ w.T).norm(), r"Python float"),
    Wrong(check_relative_output_error, "notebook 02's argument order",
          lambda w, p, x: float((x @ w.T - x @ p.T).norm() / (x @ w.T).norm()), r"notebook 02's order"),
    Wrong(check_relative_output_error, "per-output-row tensor",
          lambda x, w, p: (x @ w.T - x @ p.T).norm(dim=0) / (x @ w.T).norm(dim=0), r"one number"),
    Wrong(check_relative_output_error, "crashes inside torch", crashes(), CRASH),

    Wrong(check_nm_mask, "inverted", lambda s, n, m: ~nm_mask(s, n, m), r"inverted"),
    # at 2:4 keeping the 2 lowest IS the inverted mask: either message names it
    Wrong(check_nm_mask, "keeps the lowest", lambda s, n, m: nm_mask(-s, n, m), r"keep the \d+ LOWEST|inverted: it is True for the LOWEST"),
    Wrong(check_nm_mask, "strided groups", _nm(_strided), r"not CONSECUTIVE"),
    Wrong(check_nm_mask, "prunes n of m", lambda s, n, m: nm_mask(s, m - n, m), r"you PRUNE"),
    Wrong(check_nm_mask, "N and M swapped", lambda s, n, m: nm_mask(s, m, n), r"swap N and M"),
    Wrong(check_nm_mask, "no width check", _no_width_check, r"instead of raising ValueError"),
    Wrong(check_nm_mask, "groups down the columns", lambda s, n, m: nm_mask(s.t().contiguous(), n, m).t(),
          r"run down the columns"),
    Wrong(check_nm_mask, "float mask with 0.5 entries", lambda s, n, m: nm_mask(s, n, m).float() * 0.5,
          r"only True/False"),
    Wrong(check_nm_mask, "scores modified in place", lambda s, n, m: nm_mask(s.abs_().neg_().neg_().mul_(2), n, m),
          r"in place"),
    Wrong(check_nm_mask, "crashes inside torch", crashes(), CRASH),
]
