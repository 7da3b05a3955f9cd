"""Semi-structured (N:M) sparsity: how an N:M-pruned weight is stored, and how it runs fast.

Pruning to an N:M pattern (keep N of every M consecutive weights along the input dimension,
:func:`pruning_course.masks.nm_mask`) only saves memory and time once the zeros are *not stored*.
This module shows both halves:

1. **Storage, in plain PyTorch** (:func:`compress_nm` / :func:`decompress_nm`): keep the N values of
   each group and, for each kept value, its position inside the group (``ceil(log2 M)`` bits). This
   is the format of NVIDIA's sparse tensor cores for 2:4 (Mishra et al. 2021, "Accelerating Sparse
   Deep Neural Networks", arXiv:2104.08378): half the values plus a 2-bit index per kept value.

   Byte math for a 2:4 fp16 weight with ``k`` entries (dense: ``2k`` bytes): values ``k/2 * 2 B = k B``
   (50% of dense), indices ``k/2 * 2 bit = k bit = k/8 B`` (1/8 of the values, 1/16 of dense),
   together ``k + k/8 = 1.125 k B`` = **0.5625 of dense**. Per group of 4: 2 values x 16 bit + 2 indices x
   2 bit = 36 bit instead of 64 bit. In fp32 the same metadata weighs half as much relative to the
   values (0.53125 of dense); 1:4 fp16 gives 0.25 + 1/32 = 0.28125.

2. **Speed, with PyTorch's semi-structured kernels** (:func:`to_semi_structured`): on NVIDIA GPUs of
   compute capability 8.0 or newer (Ampere, Ada, Hopper), ``torch.sparse.to_sparse_semi_structured``
   compresses a 2:4-sparse fp16/bf16 weight for cuSPARSELt (or CUTLASS), and ``nn.Linear`` then runs
   the sparse tensor-core matmul, up to about 2x faster for large matrices (Mishra et al. 2021; see
   https://pytorch.org/docs/stable/sparse.html#sparse-semi-structured-tensors and the tutorial
   https://pytorch.org/tutorials/advanced/semi_structured_sparse.html). Only 2:4 is accelerated;
   other N:M patterns (1:4, 4:8) save memory with :func:`compress_nm` but have no kernel here.

:func:`semi_structured_support` says, before anything is changed, why a weight cannot use the kernels
(no CUDA, old GPU, wrong dtype, shape not a multiple of the kernel tile, not 2:4 sparse).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import InputError
from .architectures import ArchitectureAdapter
from .masks import nm_mask, parse_pattern
from .packing import pack_int, unpack_int

# ---------------------------------------------------------------------------------------------
# 1. Compressed N:M storage (exact, device-agnostic)
# ---------------------------------------------------------------------------------------------


def index_bits(m: int) -> int:
    """Bits needed for a position inside a group of ``m``: ``ceil(log2 m)`` (2 for m=4, 3 for m=8)."""
    return max(1, (m - 1).bit_length())


@dataclass
class CompressedNM:
    """An N:M-sparse ``(rows, cols)`` matrix stored without its zeros.

    ``values``: ``(rows, cols * n // m)`` in the weight's dtype, the ``n`` kept values of each group of
    ``m`` in column order. ``indices``: the position (``0..m-1``) of each kept value inside its group,
    ``index_bits(m)`` bits each, packed least-significant-bit first into a flat ``uint8`` tensor
    (for 2:4, four 2-bit indices per byte: one byte describes two groups).
    """

    values: torch.Tensor
    indices: torch.Tensor
    shape: tuple[int, int]
    n: int
    m: int

    @property
    def nbytes(self) -> int:
        """Exact bytes stored: values plus packed indices."""
        return self.values.numel() * self.values.element_size() + self.indices.numel() * self.indices.element_size()

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the dense matrix in the same dtype."""
        return self.shape[0] * self.shape[1] * self.values.element_size()

    @property
    def ratio(self) -> float:
        """``nbytes / dense_nbytes`` (0.5625 for 2:4 in fp16/bf16)."""
        return self.nbytes / self.dense_nbytes


def _check_nm(weight: torch.Tensor, n: int, m: int) -> None:
    if weight.dim() != 2:
        raise InputError(f"expected a 2-D (out_features, in_features) weight, got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    if cols % m:
        raise InputError(
            f"an {n}:{m} pattern groups the {cols} columns in groups of {m}, but {cols} is not a multiple of {m}"
        )
    counts = (weight.reshape(rows, cols // m, m) != 0).sum(dim=2)
    bad = (counts > n).nonzero()
    if len(bad):
        row, group = (int(v) for v in bad[0])
        raise InputError(
            f"the weight is not {n}:{m} sparse: row {row}, group {group} (columns {group * m}..{group * m + m - 1}) "
            f"has {int(counts[row, group])} non-zeros, more than {n} ({len(bad)} such group(s) in all); "
            f"prune it with an {n}:{m} mask first (pruning_course.masks.nm_mask)"
        )


@torch.no_grad()
def compress_nm(weight: torch.Tensor, n: int = 2, m: int = 4) -> CompressedNM:
    """Store an N:M-sparse ``(rows, cols)`` weight as kept values plus packed in-group positions.

    Every group of ``m`` consecutive columns keeps exactly ``n`` entries: its non-zeros, then (if it has
    fewer than ``n``) zeros from its first zero positions, so that every group has the same size and
    :func:`decompress_nm` restores the weight exactly. Kept positions are in increasing order.
    Raises ``ValueError`` if a group has more than ``n`` non-zeros or the width is not a multiple of ``m``.
    """
    n, m = parse_pattern((n, m))
    _check_nm(weight, n, m)
    rows, cols = weight.shape
    groups = weight.reshape(rows, cols // m, m)
    # Sort key: non-zeros first, each part in position order; keep the first n, then re-sort by position.
    position = torch.arange(m, device=weight.device)
    key = (groups == 0).to(torch.int64) * m + position
    kept = torch.sort(torch.argsort(key, dim=2)[..., :n], dim=2).values
    values = torch.gather(groups, 2, kept).reshape(rows, cols // m * n).contiguous()
    return CompressedNM(values=values, indices=pack_int(kept, index_bits(m)), shape=(rows, cols), n=n, m=m)


@torch.no_grad()
def decompress_nm(c: CompressedNM) -> torch.Tensor:
    """The dense ``(rows, cols)`` weight back from :func:`compress_nm`, bit for bit."""
    rows, cols = c.shape
    num_groups = cols // c.m
    kept = unpack_int(c.indices, index_bits(c.m), rows * num_groups * c.n).long().reshape(rows, num_groups, c.n)
    dense = torch.zeros(rows, num_groups, c.m, dtype=c.values.dtype, device=c.values.device)
    dense.scatter_(2, kept, c.values.reshape(rows, num_groups, c.n))
    return dense.reshape(rows, cols)


# ---------------------------------------------------------------------------------------------
# 2. PyTorch's semi-structured (2:4) sparse kernels
# ---------------------------------------------------------------------------------------------

MIN_COMPUTE_CAPABILITY = (8, 0)  # 2:4 sparse tensor cores arrived with Ampere (A100)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
BACKENDS = ("auto", "cusparselt", "cutlass")


def _backend_class(backend: str = "auto"):
    """The ``torch.sparse`` subclass for ``backend``; ``"auto"`` prefers cuSPARSELt when PyTorch has it."""
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    if backend not in BACKENDS:
        raise InputError(f"unknown semi-structured backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "cusparselt" if torch.backends.cusparselt.is_available() else "cutlass"
    return SparseSemiStructuredTensorCUSPARSELT if backend == "cusparselt" else SparseSemiStructuredTensorCUTLASS


def semi_structured_support(weight: torch.Tensor, backend: str = "auto") -> str | None:
    """``None`` if ``weight`` can become a 2:4 semi-structured tensor here, else the reason it cannot.

    The checks follow ``torch.sparse.semi_structured`` (``_validate_device_dim_dtype_shape``): a CUDA
    device of compute capability >= 8.0, the weight on it, fp16 or bf16, both dimensions positive
    multiples of the backend's tile (``_DTYPE_SHAPE_CONSTRAINTS``: 16x16 for cuSPARSELt, 32x64 for
    CUTLASS in fp16/bf16), and at most 2 non-zeros in every group of 4 along the rows.
    """
    if not torch.cuda.is_available():
        return "no CUDA device: semi-structured sparse kernels need an NVIDIA GPU (compute capability >= 8.0)"
    if weight.device.type != "cuda":
        return f"the weight is on {weight.device}: move the layer to a CUDA device first"
    if isinstance(weight, torch.sparse.SparseSemiStructuredTensor):
        return "the weight is already a semi-structured sparse tensor"
    capability = torch.cuda.get_device_capability(weight.device)
    if capability < MIN_COMPUTE_CAPABILITY:
        return (
            f"compute capability {capability[0]}.{capability[1]} < {MIN_COMPUTE_CAPABILITY[0]}.{MIN_COMPUTE_CAPABILITY[1]}: "
            "2:4 sparse tensor cores need Ampere (A100) or newer"
        )
    if weight.dim() != 2:
        return f"the weight has {weight.dim()} dimensions: only 2-D matrices are supported"
    if weight.dtype not in SUPPORTED_DTYPES:
        return f"dtype {str(weight.dtype).removeprefix('torch.')} not supported: use float16 or bfloat16"
    cls = _backend_class(backend)
    rows_tile, cols_tile = cls._DTYPE_SHAPE_CONSTRAINTS[weight.dtype][:2]
    rows, cols = weight.shape
    if rows < rows_tile or rows % rows_tile or cols < cols_tile or cols % cols_tile:
        return (
            f"shape ({rows}, {cols}): rows must be a multiple of {rows_tile} and columns a multiple of "
            f"{cols_tile} for the {cls.BACKEND} backend in {str(weight.dtype).removeprefix('torch.')}"
        )
    try:
        _check_nm(weight, 2, 4)
    except ValueError as error:
        return str(error)
    return None


class SemiStructuredUnsupported(RuntimeError):
    """A weight cannot use the semi-structured kernels; the message says why."""


@torch.no_grad()
def to_semi_structured(linear: nn.Linear, backend: str = "auto") -> nn.Linear:
    """Replace a 2:4-pruned ``nn.Linear``'s weight by ``torch.sparse.to_sparse_semi_structured`` (in place).

    Afterwards ``linear(x)`` runs the sparse tensor-core matmul; the layer is for inference (the
    weight no longer requires grad). Raises :class:`SemiStructuredUnsupported` with the reason from
    :func:`semi_structured_support` if it cannot run here. GPT-2's linears store their weight
    transposed, ``(in, out)``, so their 2:4 groups run the wrong way for the kernel: they are refused.
    """
    if type(linear) is not nn.Linear:
        raise SemiStructuredUnsupported(
            f"{type(linear).__name__} is not an nn.Linear: only nn.Linear weights (out, in) are converted"
        )
    reason = semi_structured_support(linear.weight, backend)
    if reason is not None:
        raise SemiStructuredUnsupported(f"cannot convert to 2:4 semi-structured sparsity: {reason}")
    sparse = _backend_class(backend).from_dense(linear.weight.detach().contiguous())
    linear.weight = nn.Parameter(sparse, requires_grad=False)
    return linear


def sparsify_model_semi_structured(
    model: nn.Module, adapter: ArchitectureAdapter, backend: str = "auto"
) -> dict[str, str]:
    """Convert every prunable linear of ``model`` that qualifies; return ``{name: reason}`` of those skipped.

    Prune the model to 2:4 first (e.g. ``prune_model(..., pattern="2:4")``) and move it to a CUDA device
    in float16 or bfloat16. Nothing is changed for a skipped layer.
    """
    skipped = {}
    for name, module in adapter.named_linears(model).items():
        try:
            to_semi_structured(module, backend)
        except SemiStructuredUnsupported as error:
            skipped[name] = str(error)
    return skipped


def _time_ms(fn, warmup: int, iters: int) -> float:
    """Mean milliseconds per call of ``fn`` measured with CUDA events after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


@torch.no_grad()
def benchmark_linear(
    out_features: int,
    in_features: int,
    batch_sizes=(1, 16, 64, 256),
    dtype: torch.dtype = torch.float16,
    device: str | torch.device = "cuda",
    warmup: int = 10,
    iters: int = 100,
    backend: str = "auto",
    seed: int = 0,
) -> list[dict]:
    """Time a dense vs a 2:4 semi-structured ``nn.Linear`` (random weight, magnitude 2:4 mask).

    Returns one dict per batch size: shape, batch, dtype, backend, ``dense_ms``, ``sparse_ms``,
    ``speedup`` (dense / sparse) and ``max_abs_diff`` between the two outputs (float rounding only).
    Raises :class:`SemiStructuredUnsupported` if the kernels cannot run here.
    """
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator)
    weight = (weight * nm_mask(weight.abs(), 2, 4)).to(device=device, dtype=dtype)
    dense = nn.Linear(in_features, out_features, bias=False, device=device, dtype=dtype)
    dense.weight.data.copy_(weight)
    sparse = nn.Linear(in_features, out_features, bias=False, device=device, dtype=dtype)
    sparse.weight.data.copy_(weight)
    to_semi_structured(sparse, backend)
    backend_name = type(sparse.weight).BACKEND
    results = []
    for batch in batch_sizes:
        x = torch.randn(batch, in_features, generator=generator).to(device=device, dtype=dtype)
        dense_ms = _time_ms(lambda: dense(x), warmup, iters)
        sparse_ms = _time_ms(lambda: sparse(x), warmup, iters)
        results.append({
            "out_features": out_features,
            "in_features": in_features,
            "batch": batch,
            "dtype": str(dtype).removeprefix("torch."),
            "backend": backend_name,
            "dense_ms": dense_ms,
            "sparse_ms": sparse_ms,
            "speedup": dense_ms / sparse_ms,
            "max_abs_diff": float((dense(x) - sparse(x)).abs().max()),
        })
    return results


def compressed_size_report(weight: torch.Tensor, n: int = 2, m: int = 4) -> dict:
    """Bytes of ``weight`` dense and N:M-compressed (``weight`` must already be N:M sparse)."""
    c = compress_nm(weight, n, m)
    return {
        "shape": list(c.shape),
        "pattern": f"{n}:{m}",
        "dtype": str(weight.dtype).removeprefix("torch."),
        "dense_bytes": c.dense_nbytes,
        "values_bytes": c.values.numel() * c.values.element_size(),
        "index_bytes": c.indices.numel(),
        "compressed_bytes": c.nbytes,
        "ratio": c.ratio,
        "index_bits": index_bits(m),
        "expected_ratio": n / m + n * index_bits(m) / (8 * m * weight.element_size()),
    }


__all__ = [
    "CompressedNM",
    "SemiStructuredUnsupported",
    "benchmark_linear",
    "compress_nm",
    "compressed_size_report",
    "decompress_nm",
    "index_bits",
    "semi_structured_support",
    "sparsify_model_semi_structured",
    "to_semi_structured",
]
