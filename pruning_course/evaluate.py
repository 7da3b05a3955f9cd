"""Measuring a (pruned) model: perplexity with the papers' protocol, sparsity, memory.

Perplexity follows the evaluation code of SparseGPT and Wanda: the test split is tokenized once as
one long sequence, cut into non-overlapping windows of ``seqlen`` tokens (the remainder is dropped),
and perplexity is ``exp`` of the mean next-token negative log-likelihood over all windows. Every
window starts without context, so a shorter ``seqlen`` gives a higher perplexity: always report
``seqlen`` and the token count with the number.
"""

from __future__ import annotations

import math
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .errors import InputError
from .architectures import ArchitectureAdapter, weight_matrix


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    seqlen: int
    windows: int
    eval_tokens: int  # tokens in the evaluated windows (windows * seqlen), as the references count them
    mean_nll: float

    def as_dict(self) -> dict:
        return asdict(self)

    def record(self) -> dict:
        """The fields a result record (``prune --json``, ``eval --json``) keeps."""
        return {"ppl": self.ppl, "seqlen": self.seqlen, "eval_tokens": self.eval_tokens, "eval_windows": self.windows}

    @classmethod
    def of_windows(cls, total_nll: float, windows: torch.Tensor) -> PerplexityResult:
        """The result for ``total_nll``, the NLL summed over every predicted token of the ``(n, seqlen)`` windows."""
        mean_nll = total_nll / windows[:, 1:].numel()
        return cls(ppl=math.exp(mean_nll), seqlen=windows.shape[1], windows=windows.shape[0],
                   eval_tokens=windows.numel(), mean_nll=mean_nll)

    def __str__(self) -> str:
        return f"perplexity {self.ppl:.3f} (seqlen {self.seqlen}, {self.eval_tokens:,} tokens in {self.windows} windows)"


def eval_windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping ``(n, seqlen)`` windows of a 1-D token sequence, remainder dropped."""
    ids = ids.reshape(-1)
    if seqlen < 2:
        raise InputError(f"seqlen must be at least 2 tokens, got {seqlen}")
    n = ids.numel() // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise InputError(f"the evaluation text has {ids.numel()} tokens, fewer than one window of seqlen={seqlen}")
    return ids[: n * seqlen].view(n, seqlen)


def summed_nll(logits: torch.Tensor, batch: torch.Tensor) -> float:
    """Summed next-token NLL of a batch of windows: token ``t + 1`` predicted from the logits at ``t``.

    Row by row, in float32: no copy of the whole ``(batch, seq, vocab)`` tensor."""
    return sum(float(F.cross_entropy(row_logits[:-1].float(), row_ids[1:], reduction="sum"))
               for row_logits, row_ids in zip(logits, batch))


@torch.no_grad()
def perplexity(
    model: nn.Module,
    ids: torch.Tensor,
    seqlen: int = 512,
    *,
    batch_size: int = 4,
    max_windows: int | None = None,
    device=None,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of ``model`` on the 1-D token sequence ``ids`` (the papers' protocol, see module doc)."""
    windows = eval_windows(ids, seqlen, max_windows)
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll = 0.0
    for batch in tqdm(windows.split(batch_size), desc=f"perplexity@{seqlen}", unit="batch", disable=not progress):
        batch = batch.to(device)
        total_nll += summed_nll(model(input_ids=batch, use_cache=False).logits, batch)
    model.train(was_training)
    return PerplexityResult.of_windows(total_nll, windows)


def relative_output_error(x: torch.Tensor, weight: torch.Tensor, new_weight: torch.Tensor) -> float:
    """How much a changed layer changes its outputs: ``||X W^T - X W'^T||_F / ||X W^T||_F``.

    ``x`` holds the layer's inputs ``(..., in)``; weights are ``(out, in)``. Computed in float64.
    This is the layer-wise objective that SparseGPT minimises (Eq. 1), made relative.
    """
    x = x.detach().reshape(-1, x.shape[-1]).double()
    dense = x @ weight.detach().double().t()
    return float((dense - x @ new_weight.detach().double().t()).norm() / dense.norm())


def sparsity_report(model: nn.Module, adapter: ArchitectureAdapter) -> dict:
    """Fraction of zero weights per linear, per block and in total, over the prunable linears only."""
    blocks, zeros_total, params_total = [], 0, 0
    for index, block in enumerate(adapter.blocks(model)):
        linears, zeros_block, params_block = {}, 0, 0
        for name, linear in adapter.linears(block).items():
            weight = weight_matrix(linear)
            zeros, params = int((weight == 0).sum()), weight.numel()
            linears[name] = zeros / params
            zeros_block, params_block = zeros_block + zeros, params_block + params
        blocks.append({"block": index, "sparsity": zeros_block / params_block, "linears": linears})
        zeros_total, params_total = zeros_total + zeros_block, params_total + params_block
    return {
        "sparsity": zeros_total / params_total,
        "zeros": zeros_total,
        "prunable_params": params_total,
        "total_params": sum(p.numel() for p in model.parameters()),
        "blocks": blocks,
    }


def format_sparsity_report(report: dict) -> str:
    """A small text table of a :func:`sparsity_report`."""
    lines = [f"{'block':>5}  {'sparsity':>8}  linears"]
    for block in report["blocks"]:
        per_linear = "  ".join(f"{name.split('.')[-1]}={s:.2f}" for name, s in block["linears"].items())
        lines.append(f"{block['block']:>5}  {block['sparsity']:>8.3f}  {per_linear}")
    lines.append(f"total: {report['sparsity']:.4f} of {report['prunable_params']:,} prunable weights are zero")
    return "\n".join(lines)


def reset_peak_rss() -> bool:
    """Reset the kernel's record of this process's peak resident memory (Linux); True on success."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB since start or the last :func:`reset_peak_rss`."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def size_on_disk_mb(path: str | Path) -> float:
    """Total size of the files under ``path`` (a saved model directory) in MiB."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


@dataclass(frozen=True)
class SpeedResult:
    """Measured CPU/GPU throughput of a model: prompt processing (prefill) and token generation."""

    batch_size: int
    prompt_tokens: int
    new_tokens: int
    prefill_seconds: float  # median over repeats, one forward of (batch_size, prompt_tokens)
    generate_seconds: float  # median over repeats, prefill + new_tokens decoding steps with a KV cache
    threads: int
    peak_rss_mb: float
    clock: str = "wall"  # "wall": elapsed time; "process": CPU time of this process, summed over its threads

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.batch_size * self.prompt_tokens / self.prefill_seconds

    @property
    def decode_tokens_per_s(self) -> float:
        """Generated tokens per second, with the prefill's share of the generation time taken out."""
        decode = max(self.generate_seconds - self.prefill_seconds, 1e-9)
        return self.batch_size * self.new_tokens / decode

    def as_dict(self) -> dict:
        return {**asdict(self), "prefill_tokens_per_s": self.prefill_tokens_per_s,
                "decode_tokens_per_s": self.decode_tokens_per_s}

    def __str__(self) -> str:
        return (f"prefill {self.prefill_tokens_per_s:,.0f} tok/s ({self.batch_size}x{self.prompt_tokens}), "
                f"generation {self.decode_tokens_per_s:,.1f} tok/s ({self.new_tokens} new tokens), "
                f"{self.threads} threads")


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def interleaved_median_ms(fns, warmup: int = 3, repeats: int = 20, clock: str = "wall") -> list[float]:
    """Median milliseconds of each of ``fns``, timed in turns (``f0, f1, f0, f1, ...``) after
    ``warmup`` untimed rounds: the course's one timing loop on the CPU.

    On a shared machine the load changes over time; taking turns exposes every contender to the
    same load, so their *ratio* is far more stable than when each is timed in its own block, and
    the median (not the mean) keeps one interruption from moving the result. ``clock``: ``"wall"``
    (elapsed) or ``"process"`` (this process's CPU seconds, see :func:`measure_speed`).
    """
    if warmup < 0 or repeats < 1:
        raise InputError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    if clock not in CLOCKS:
        raise InputError(f"unknown clock {clock!r}; choose one of {', '.join(CLOCKS)}")
    now = CLOCKS[clock]
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times):
            start = now()
            fn()
            record.append(now() - start)
    return [statistics.median(record) * 1e3 for record in times]


@torch.no_grad()
def measure_speed(
    model: nn.Module,
    *,
    batch_size: int = 4,
    prompt_tokens: int = 128,
    new_tokens: int = 32,
    repeats: int = 3,
    warmup: int = 1,
    prompt_ids: torch.Tensor | None = None,
    seed: int = 0,
    clock: str = "wall",
) -> SpeedResult:
    """Time ``model`` on this machine: one prompt forward and a greedy generation of ``new_tokens``.

    Measured wall-clock time (median of ``repeats`` after ``warmup`` runs), not a FLOP estimate:
    what a structurally pruned model buys is only real if it shows up here. Prompts are random token
    ids (speed does not depend on the text) unless ``prompt_ids`` ``(batch, prompt_tokens)`` is given.
    Generation always produces exactly ``new_tokens`` tokens (no early stop at end-of-sequence).
    ``peak_rss_mb`` is this process's peak resident memory during the measurement (weights included;
    on Linux the peak is reset first, elsewhere it is the process-lifetime peak).

    ``clock="process"`` times this process's CPU seconds instead of elapsed seconds: on a machine
    shared with other jobs it stays close to the quiet-machine figure (time spent waiting for a core
    is not counted), but with several threads it adds up the time of each, so the rates it gives are
    per CPU-second. Compare models on the same clock, never across clocks.
    """
    if min(batch_size, prompt_tokens, new_tokens, repeats) < 1 or warmup < 0:
        raise InputError("batch_size, prompt_tokens, new_tokens and repeats must be positive, warmup >= 0")
    if clock not in CLOCKS:
        raise InputError(f"unknown clock {clock!r}; choose one of {', '.join(CLOCKS)}")
    device = next(model.parameters()).device
    if prompt_ids is None:
        vocab = model.get_input_embeddings().num_embeddings
        generator = torch.Generator().manual_seed(seed)
        prompt_ids = torch.randint(0, vocab, (batch_size, prompt_tokens), generator=generator)
    prompt_ids = prompt_ids.to(device)
    batch_size, prompt_tokens = prompt_ids.shape
    attention_mask = torch.ones_like(prompt_ids)
    was_training = model.training
    model.eval()
    reset_peak_rss()

    def prefill():
        model(input_ids=prompt_ids, attention_mask=attention_mask, use_cache=False)

    def generate():
        model.generate(
            input_ids=prompt_ids, attention_mask=attention_mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False, pad_token_id=0, eos_token_id=None,
        )

    prefill_seconds = interleaved_median_ms([prefill], warmup, repeats, clock)[0] / 1e3
    generate_seconds = interleaved_median_ms([generate], warmup, repeats, clock)[0] / 1e3
    model.train(was_training)
    return SpeedResult(
        batch_size=batch_size, prompt_tokens=prompt_tokens, new_tokens=new_tokens, prefill_seconds=prefill_seconds,
        generate_seconds=generate_seconds, threads=torch.get_num_threads(), peak_rss_mb=peak_rss_mb(), clock=clock,
    )


def prune_and_measure(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    method: str,
    sparsity=None,
    pattern=None,
    windows: torch.Tensor | None = None,
    *,
    test_ids: torch.Tensor | None = None,
    seqlen: int = 512,
    max_eval_windows: int | None = None,
    owl: tuple[float, float] | None = None,
    batch_size: int = 4,
    device=None,
    progress: bool = False,
    calib_dtype: torch.dtype | None = None,
    **options,
) -> dict:
    """Prune ``model`` in place with a registered one-shot ``method`` and measure it: the record
    ``pruning-course prune`` and ``compare`` print and write, for notebooks and benchmarks too.

    ``method="dense"`` prunes nothing (the baseline row). ``sparsity`` may be a per-block schedule
    (as for :func:`~pruning_course.methods.prune_model`; the record keeps it as ``block_sparsities``
    and its mean as ``target_sparsity``). ``owl = (M, lambda)`` prunes at OWL's per-block
    sparsities with mean ``sparsity`` instead of a uniform one. With ``test_ids`` the
    record also holds the test perplexity over ``seqlen`` windows (the first ``max_eval_windows``).
    The peak-memory record is reset first, so ``peak_rss_mb`` covers pruning and evaluation (with
    the model itself resident). Prune a copy (``copy.deepcopy``) or reload the dense state between
    calls to compare methods on one model.
    """
    from .masks import resolve_target
    from .methods import needs_calibration, prune_model
    from .schedules import block_sparsities, is_uniform
    from .unstructured.owl import prune_owl

    dense = method == "dense"
    schedule = None if dense or is_uniform(sparsity) else block_sparsities(sparsity, len(adapter.blocks(model)), pattern)[0]
    if schedule is not None and owl is not None:
        raise InputError("owl chooses the per-block sparsities itself: give one mean sparsity with owl, not a schedule")
    if dense:
        target, nm = 0.0, None
    elif schedule is not None:
        target, nm = sum(schedule) / len(schedule), None
    else:
        target, nm = resolve_target(sparsity, pattern)
    reset_peak_rss()
    start = time.perf_counter()
    owl_result = None
    if not dense:
        engine = {"batch_size": batch_size, "device": device, "progress": progress}
        if owl is not None:
            if calib_dtype is not None:
                raise InputError("calib_dtype is not supported with owl yet: calibrate OWL in float32")
            owl_result = prune_owl(model, adapter, windows, target, method, M=owl[0], lam=owl[1], **engine, **options)
        else:
            prune_model(model, adapter, method, schedule or target, nm, windows=windows, calib_dtype=calib_dtype,
                        **engine, **options)
    record = {
        "method": method,
        "pattern": "dense" if dense else (f"{nm[0]}:{nm[1]}" if nm else "unstructured"),
        "target_sparsity": target,
        "sparsity": sparsity_report(model, adapter)["sparsity"],
        "calib_samples": len(windows) if windows is not None and not dense and needs_calibration(method) else 0,
        "prune_seconds": round(time.perf_counter() - start, 3),
    }
    if calib_dtype is not None and not dense and needs_calibration(method):
        record["calib_dtype"] = str(calib_dtype).removeprefix("torch.")
    if schedule is not None:
        record["block_sparsities"] = schedule
    if owl_result is not None:
        record.update(owl_m=owl[0], owl_lambda=owl[1], outlier_ratios=owl_result.outlier_ratios.tolist(),
                      block_sparsities=owl_result.sparsities.tolist())
    if test_ids is not None:
        result = perplexity(model, test_ids, seqlen, batch_size=batch_size, max_windows=max_eval_windows,
                            device=device, progress=progress)
        record.update(result.record())
    record["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return record


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors (ties broken arbitrarily): how well one
    ranking (a cheap proxy score) orders things like another (the measured damage). NaN for fewer
    than three values."""
    if len(a) != len(b):
        raise InputError(f"rank_correlation needs two sequences of one length, got {len(a)} and {len(b)}")
    if len(a) <= 2:
        return float("nan")
    ranks = [torch.as_tensor(x).argsort().argsort().double() for x in (a, b)]
    return float(torch.corrcoef(torch.stack(ranks))[0, 1])

