"""Sparse inference on the CPU: when does a CSR weight beat a dense one?

"Sparsity is not speedup." An unstructured-pruned weight still has its zeros stored and multiplied
unless it is converted to a sparse format. The classic one is CSR (compressed sparse row, see
Saad, *Iterative Methods for Sparse Linear Systems*, 2003, section 3.4; PyTorch's
``Tensor.to_sparse_csr``): for an ``(rows, cols)`` matrix with ``nnz`` non-zeros it keeps

* ``values``: the ``nnz`` non-zeros, row by row (the weight's dtype);
* ``col_indices``: the column of each non-zero (``nnz`` integers);
* ``crow_indices``: where each row starts in ``values`` (``rows + 1`` integers).

**Memory.** With ``v`` bytes per value and ``i`` bytes per index, CSR needs
``nnz (v + i) + (rows + 1) i`` bytes against ``rows cols v`` dense. Ignoring the row pointers it is
smaller only when the density ``nnz / (rows cols)`` is below ``v / (v + i)``, i.e. above the sparsity
``i / (v + i)``: **2/3 (67%) for fp32 values with PyTorch's default int64 indices**, 50% with int32
indices, 80% for fp16 values with int64 indices (:func:`csr_memory_break_even`). A 50%-pruned fp32
weight stored as CSR with int64 indices is *larger* than the dense one.

**Time.** ``y = x W^T`` with a dense ``W`` is one BLAS GEMM that streams contiguous memory at close
to the CPU's peak FLOP rate. The CSR product does ``nnz`` multiply-adds but with an indirect,
irregular access ``x[col_indices[k]]`` per non-zero and little vectorization, so each useful
multiply-add costs several times more. CSR therefore wins only at high sparsity, and the break-even
moves with the batch size (a batch of 1 is a memory-bound GEMV, where skipping bytes helps sooner,
while large batches make dense GEMM efficient). :func:`sweep` measures it on the machine at hand and
:func:`break_even_sparsity` reads the crossing off the measurements. Measured timings depend on the
CPU, the thread count (recorded with every row) and on whatever else runs on the machine.

The model-level half (:class:`CSRLinear`, :func:`compare_model_dense_vs_csr`) swaps every prunable
linear of a model for a CSR one and times a whole forward pass, to show that a 50% unstructured model
runs no faster on a CPU.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .errors import InputError
from .architectures import PRUNABLE_KINDS, ArchitectureAdapter, is_prunable_linear, replace_module, weight_matrix
from .evaluate import interleaved_median_ms
from .masks import num_to_prune, validate_sparsity

DEFAULT_SPARSITIES = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99)
DEFAULT_BATCH_SIZES = (1, 4, 16, 64, 256)
# SmolLM2-135M: the MLP's up/gate projections are (1536, 576); q_proj and o_proj are (576, 576).
DEFAULT_SHAPES = ((1536, 576), (576, 576))


# ---------------------------------------------------------------------------------------------
# Tensors and their bytes
# ---------------------------------------------------------------------------------------------


def to_csr(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (2-D, strided) as a sparse CSR tensor, without PyTorch's "CSR is beta" warning."""
    if weight.dim() != 2 or weight.layout != torch.strided:
        raise InputError(f"expected a dense 2-D weight, got shape {tuple(weight.shape)} with layout {weight.layout}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return weight.detach().contiguous().to_sparse_csr()


def random_sparse_weight(
    out_features: int, in_features: int, sparsity: float, seed: int = 0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A dense ``(out, in)`` Gaussian weight with exactly ``floor(sparsity * numel)`` zeros at uniformly random places.

    Unstructured pruning of a trained model leaves zeros spread much like this; time the real
    pruned weights of a model (``weight_matrix`` of each of ``adapter.named_linears``) to check.
    """
    if out_features < 1 or in_features < 1:
        raise InputError(f"a weight needs positive dimensions, got ({out_features}, {in_features})")
    if sparsity != 0:
        sparsity = validate_sparsity(sparsity)
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator)
    removed = torch.randperm(weight.numel(), generator=generator)[: num_to_prune(weight.numel(), sparsity)]
    weight.view(-1)[removed] = 0.0
    return weight.to(dtype)


def dense_nbytes(weight: torch.Tensor) -> int:
    """Bytes of a dense tensor: ``numel * element_size``."""
    return weight.numel() * weight.element_size()


def csr_nbytes(csr: torch.Tensor) -> int:
    """Exact bytes of a CSR tensor: ``values`` + ``col_indices`` + ``crow_indices``."""
    if csr.layout != torch.sparse_csr:
        raise InputError(f"expected a sparse CSR tensor (weight.to_sparse_csr()), got layout {csr.layout}")
    return sum(t.numel() * t.element_size() for t in (csr.values(), csr.col_indices(), csr.crow_indices()))


def _itemsize(dtype: torch.dtype | int) -> int:
    if isinstance(dtype, int):
        if dtype < 1:
            raise InputError(f"a byte size must be positive, got {dtype}")
        return dtype
    if not isinstance(dtype, torch.dtype):
        raise InputError(f"expected a torch dtype (e.g. torch.float32, torch.int64) or a byte count, got {dtype!r}")
    return torch.empty((), dtype=dtype).element_size()


def csr_nbytes_formula(
    rows: int, cols: int, nnz: int, value_dtype: torch.dtype | int = torch.float32, index_dtype: torch.dtype | int = torch.int64
) -> int:
    """CSR bytes from the shape alone: ``nnz * (v + i) + (rows + 1) * i`` (``v``, ``i``: bytes per value / index)."""
    if not 0 <= nnz <= rows * cols:
        raise InputError(f"nnz must be between 0 and rows*cols={rows * cols}, got {nnz}")
    v, i = _itemsize(value_dtype), _itemsize(index_dtype)
    return nnz * (v + i) + (rows + 1) * i


def csr_memory_break_even(
    value_dtype: torch.dtype | int = torch.float32,
    index_dtype: torch.dtype | int = torch.int64,
    rows: int | None = None,
    cols: int | None = None,
) -> float:
    """The sparsity above which CSR takes fewer bytes than the dense matrix.

    Without a shape, the row pointers are neglected: CSR is smaller when
    ``(1 - s)(v + i) < v``, i.e. ``s > i / (v + i)`` (fp32 + int64: 2/3; fp32 + int32: 1/2;
    fp16 + int64: 4/5). With ``rows`` and ``cols`` the ``(rows + 1) i`` bytes of row pointers are
    included: ``s > 1 - (rows cols v - (rows + 1) i) / (rows cols (v + i))``.
    Returns a value > 1 if CSR can never be smaller (a tiny matrix whose row pointers alone outweigh it).
    """
    v, i = _itemsize(value_dtype), _itemsize(index_dtype)
    if (rows is None) != (cols is None):
        raise InputError("give both rows and cols, or neither (the shape-free limit)")
    if rows is None:
        return i / (v + i)
    if rows < 1 or cols < 1:
        raise InputError(f"rows and cols must be positive, got ({rows}, {cols})")
    numel = rows * cols
    return 1.0 - (numel * v - (rows + 1) * i) / (numel * (v + i))


# ---------------------------------------------------------------------------------------------
# Timing one weight (timed in turns with evaluate.interleaved_median_ms)
# ---------------------------------------------------------------------------------------------


def dense_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``y = x W^T`` with a dense ``(out, in)`` weight (one GEMM)."""
    return torch.matmul(x, weight.t())


def csr_linear(x: torch.Tensor, csr: torch.Tensor) -> torch.Tensor:
    """``y = x W^T`` with a CSR ``(out, in)`` weight: ``(W x^T)^T``, sparse times dense (``torch.sparse.mm``)."""
    return torch.sparse.mm(csr, x.t()).t()


@torch.no_grad()
def time_dense_vs_csr(
    weight: torch.Tensor,
    batch_sizes: Iterable[int] = DEFAULT_BATCH_SIZES,
    warmup: int = 3,
    repeats: int = 20,
    seed: int = 0,
) -> list[dict]:
    """Time ``y = x W^T`` with ``weight`` dense and as CSR, for inputs of each batch size.

    Returns one row per batch size with the shape, measured sparsity, ``batch``, ``dense_ms`` and
    ``csr_ms`` (medians, timed in turns: :func:`interleaved_median_ms`), ``time_ratio``
    (csr / dense: below 1 means CSR is faster), ``speedup`` (dense / csr), ``dense_bytes`` and
    ``csr_bytes`` (exact, from the tensors), ``max_abs_diff`` between the two outputs and ``threads`` (``torch.get_num_threads()``).
    """
    if weight.dim() != 2:
        raise InputError(f"expected an (out, in) weight matrix, got shape {tuple(weight.shape)}")
    weight = weight.detach().contiguous()
    csr = to_csr(weight)
    rows, cols = weight.shape
    generator = torch.Generator().manual_seed(seed)
    results = []
    for batch in batch_sizes:
        if int(batch) < 1:
            raise InputError(f"batch sizes must be positive, got {batch}")
        x = torch.randn(int(batch), cols, generator=generator).to(weight.dtype)
        dense_ms, csr_ms = interleaved_median_ms([lambda: dense_linear(x, weight), lambda: csr_linear(x, csr)], warmup, repeats)
        results.append({
            "out_features": rows,
            "in_features": cols,
            "sparsity": float((weight == 0).sum()) / weight.numel(),
            "batch": int(batch),
            "dtype": str(weight.dtype).removeprefix("torch."),
            "dense_ms": dense_ms,
            "csr_ms": csr_ms,
            "time_ratio": csr_ms / dense_ms,
            "speedup": dense_ms / csr_ms,
            "dense_bytes": dense_nbytes(weight),
            "csr_bytes": csr_nbytes(csr),
            "max_abs_diff": float((dense_linear(x, weight) - csr_linear(x, csr)).abs().max()),
            "threads": torch.get_num_threads(),
        })
    return results


def sweep(
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    shapes: Sequence[tuple[int, int]] = DEFAULT_SHAPES,
    warmup: int = 3,
    repeats: int = 20,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> list[dict]:
    """:func:`time_dense_vs_csr` on random unstructured weights of every shape and sparsity.

    Returns the concatenated rows (each carries its shape, sparsity and batch size).
    """
    from tqdm.auto import tqdm

    grid = [(shape, s) for shape in shapes for s in sparsities]
    rows = []
    for (out_features, in_features), sparsity in tqdm(grid, desc="CSR sweep", disable=not progress):
        weight = random_sparse_weight(out_features, in_features, sparsity, seed=seed, dtype=dtype)
        for row in time_dense_vs_csr(weight, batch_sizes, warmup, repeats, seed):
            row["target_sparsity"] = sparsity
            rows.append(row)
    return rows


def break_even_sparsity(rows: Sequence[dict], batch_size: int, shape: tuple[int, int] | None = None) -> float | None:
    """The lowest sparsity from which CSR is faster than dense at ``batch_size``, from measured rows.

    Rows are those of :func:`sweep` (keys ``sparsity``, ``batch``, ``time_ratio`` = csr / dense, and
    ``out_features``/``in_features``). Among the rows of that batch size (and ``shape``, required when
    the rows hold several shapes), sorted by sparsity: the crossing is taken after the *last* measured
    point where CSR is not faster, so a noisy single win below it does not count. The break-even is
    interpolated linearly in the time ratio between that point and the next one (where the ratio is 1).
    Returns the lowest measured sparsity if CSR is faster everywhere, ``None`` if it never wins
    at the highest measured sparsity.
    """
    selected = [r for r in rows if r["batch"] == batch_size]
    shapes = {(r["out_features"], r["in_features"]) for r in selected}
    if shape is not None:
        selected = [r for r in selected if (r["out_features"], r["in_features"]) == tuple(shape)]
    elif len(shapes) > 1:
        raise InputError(f"the rows hold several shapes {sorted(shapes)}: pass shape=(out, in) to choose one")
    if not selected:
        raise InputError(f"no measured rows for batch size {batch_size}" + (f" and shape {tuple(shape)}" if shape else ""))
    return crossing_after_last_slower(sorted((r["sparsity"], r["time_ratio"]) for r in selected))


def crossing_after_last_slower(points: Sequence[tuple[float, float]]) -> float | None:
    """The sparsity where the time ratio crosses 1 after the last point with ratio >= 1, in the order given.

    ``points`` are ``(sparsity, time_ratio)`` pairs, sorted by sparsity for :func:`break_even_sparsity`.
    Linear interpolation between that last slower point and the next; the first sparsity if no point
    is slower; ``None`` if the last point is slower.
    """
    slower = [k for k, (_, ratio) in enumerate(points) if ratio >= 1.0]
    if not slower:
        return points[0][0]
    last = slower[-1]
    if last == len(points) - 1:
        return None
    (s0, r0), (s1, r1) = points[last], points[last + 1]
    return s0 + (r0 - 1.0) / (r0 - r1) * (s1 - s0)


# ---------------------------------------------------------------------------------------------
# A whole model with CSR weights
# ---------------------------------------------------------------------------------------------


class CSRLinear(nn.Module):
    """A linear layer whose ``(out, in)`` weight is stored as CSR (inference only).

    ``forward`` flattens the leading dimensions, computes ``(W x^T)^T + b`` with ``torch.sparse.mm``
    and restores the shape. Build one with :meth:`from_linear` from any prunable linear (``nn.Linear`` or GPT-2's transposed one).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight_csr = to_csr(weight)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, module: nn.Module) -> CSRLinear:
        if not is_prunable_linear(module):
            raise InputError(f"{type(module).__name__} is not a prunable linear layer ({PRUNABLE_KINDS})")
        return cls(weight_matrix(module), module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        y = csr_linear(flat, self.weight_csr)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def nbytes(self) -> int:
        return csr_nbytes(self.weight_csr)

    def extra_repr(self) -> str:
        nnz = self.weight_csr.values().numel()
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={nnz}, bias={self.bias is not None}"


def replace_linears_with_csr(model: nn.Module, adapter: ArchitectureAdapter) -> dict[str, CSRLinear]:
    """Swap every prunable linear of ``model`` (in place) for a :class:`CSRLinear`; return the new modules."""
    replaced = {}
    for name, module in adapter.named_linears(model).items():
        csr_module = CSRLinear.from_linear(module)
        replace_module(model, name, csr_module)
        replaced[name] = csr_module
    return replaced


def linear_bytes(model: nn.Module, adapter: ArchitectureAdapter) -> int:
    """Bytes of the prunable linears' weights, as stored (dense, or CSR after :func:`replace_linears_with_csr`)."""
    total = 0
    for block in adapter.blocks(model):
        for module in block.modules():
            if isinstance(module, CSRLinear):
                total += module.nbytes()
            elif is_prunable_linear(module):
                total += dense_nbytes(module.weight)
    return total


@torch.no_grad()
def compare_model_dense_vs_csr(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    input_ids: torch.Tensor,
    warmup: int = 1,
    repeats: int = 5,
) -> dict:
    """Time one forward pass of ``model`` as is and with every prunable linear stored as CSR.

    The model is not changed (the CSR version is a deep copy). Returns ``dense_ms``, ``csr_ms``
    (medians), ``speedup``, the bytes of the linears in each form, the largest absolute logit
    difference, the tokens per forward and ``threads``.
    """
    if input_ids.dim() != 2:
        raise InputError(f"input_ids must be a (batch, seqlen) tensor of token ids, got shape {tuple(input_ids.shape)}")
    sparse_model = copy.deepcopy(model)
    replace_linears_with_csr(sparse_model, adapter)
    model.eval()
    sparse_model.eval()

    def forward(m):
        return m(input_ids=input_ids, use_cache=False).logits

    dense_ms, csr_ms = interleaved_median_ms([lambda: forward(model), lambda: forward(sparse_model)], warmup, repeats)
    linears = adapter.named_linears(model).values()
    zeros = sum(int((weight_matrix(m) == 0).sum()) for m in linears)
    numel = sum(weight_matrix(m).numel() for m in linears)
    return {
        "tokens": input_ids.numel(),
        "linear_sparsity": zeros / numel,
        "dense_ms": dense_ms,
        "csr_ms": csr_ms,
        "speedup": dense_ms / csr_ms,
        "dense_linear_bytes": linear_bytes(model, adapter),
        "csr_linear_bytes": linear_bytes(sparse_model, adapter),
        "max_abs_logit_diff": float((forward(model) - forward(sparse_model)).abs().max()),
        "threads": torch.get_num_threads(),
    }
