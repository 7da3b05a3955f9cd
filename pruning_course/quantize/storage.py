"""Real compressed files: sparse and quantized weights packed into a safetensors file, and back.

Pruning and quantization only shrink a model once the zeros and the spare bits are *not stored*.
:func:`save_compressed` writes one ``.safetensors`` file whose size (``os.path.getsize``) is the
real cost of a compressed model. What it stores, for every prunable linear ``NAME`` (weights as
``(out, in)``, rows = output features; all streams row-major):

* where the stored weights are (``storage``):

  - ``dense``: every position;
  - ``bitmask``: ``NAME.weight.mask``, 1 bit per weight (uint8, 8 weights per byte, least
    significant bit first), set where the weight is stored (non-zero);
  - ``2:4`` (any ``N:M``): ``NAME.weight.indices``, the positions inside each group of M of the
    N stored weights, ``ceil(log2 M)`` bits each: the format of
    :func:`pruning_course.semi_structured.compress_nm`;

* what they are:

  - not quantized: ``NAME.weight.values``, the stored weights in ``float_dtype`` (float16 by
    default; the whole matrix for ``dense``);
  - quantized to ``b`` bits: ``NAME.weight.qweight``, the integer codes of the stored weights,
    ``b`` bits each, packed (two int4 codes per byte, low nibble first, see
    :mod:`~pruning_course.packing`); ``NAME.weight.scales``, one float16 scale per
    output row and group; ``NAME.weight.qzeros``, one ``b``-bit zero point per row and group,
    packed. Positions that are not stored decode to the code ``zero``, i.e. exactly 0.

``storage="auto"`` picks, per matrix, the smallest of the three, except that a weight which fits the
N:M pattern stays in N:M storage unless that costs more than 1% extra. At exactly 50% sparsity a
bitmask (1 bit per weight) and 2:4 indices (2 bits per kept weight) cost the same (a bitmask saves
the few kept weights that happen to be exactly zero): 2:4 pays off in speed on sparse tensor cores,
not in bytes.

Every other tensor of the ``state_dict`` (embeddings, LM head, norms, biases) is stored in
``float_dtype`` (``None``: as it is in the model); integer buffers as they are; a tensor shared by
two names (tied embeddings) once. The file's metadata holds the model's config and, per linear, its
shape, storage, bits, group size and count of stored weights, so :func:`load_compressed` needs
nothing else to rebuild the model.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..architectures import ArchitectureAdapter, adapter_for, replace_module, stores_transposed, weight_matrix
from ..masks import parse_pattern
from ..model_files import check_safetensors, writing
from ..semi_structured import CompressedNM, compress_nm, decompress_nm
from .model import QuantizedWeight
from ..packing import pack_int, pack_mask, unpack_int, unpack_mask
from .rtn import SCALE_DTYPE, dequantize

FORMAT_VERSION = 1
METADATA_KEY = "pruning_course"
STORAGES = ("auto", "dense", "bitmask", "nm")
NM_TOLERANCE = 1.01  # "auto" keeps a weight that fits the N:M pattern in N:M storage unless that costs over 1% more
SPARSITY_SUFFIXES = ("mask", "indices")
QUANT_PARAM_SUFFIXES = ("scales", "qzeros")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class EncodedWeight:
    """One linear's weight as stored: ``meta`` (JSON-able) and ``tensors`` (by suffix)."""

    meta: dict
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def _nm_positions(nonzero: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed N:M indices of ``nonzero`` (compress_nm's format) and the mask of the positions they name."""
    c = compress_nm(nonzero.to(torch.uint8), n, m)
    ones = CompressedNM(values=torch.ones_like(c.values), indices=c.indices, shape=c.shape, n=n, m=m)
    return c.indices, decompress_nm(ones).bool()


def _candidates(nonzero: torch.Tensor, nm: tuple[int, int] | None, storage: str):
    """``(storage name, position tensors, stored-position mask or None)`` for each usable storage."""
    rows, cols = nonzero.shape
    usable = []
    if storage in ("auto", "dense"):
        usable.append(("dense", {}, None))
    if storage in ("auto", "nm") and nm is not None:
        n, m = nm
        fits = cols % m == 0 and bool((nonzero.reshape(rows, cols // m, m).sum(dim=2) <= n).all())
        if fits:
            indices, positions = _nm_positions(nonzero, n, m)
            usable.append((f"{n}:{m}", {"indices": indices}, positions))
        elif storage == "nm":
            raise InputError(f"storage='nm' needs every group of {m} inputs to hold at most {n} non-zeros; prune to {n}:{m} first")
    if storage in ("auto", "bitmask"):
        usable.append(("bitmask", {"mask": pack_mask(nonzero)}, nonzero))
    return usable


@torch.no_grad()
def encode_weight(
    weight: torch.Tensor,
    quantized: QuantizedWeight | None = None,
    *,
    storage: str = "auto",
    nm="2:4",
    value_dtype: torch.dtype = torch.float16,
) -> EncodedWeight:
    """Encode one ``(out, in)`` weight (see the module docstring for the layout).

    With ``quantized``, ``weight`` must equal its dequantized value (the model was not changed
    after quantization), and the codes are stored instead of the values.
    """
    if storage not in STORAGES:
        raise InputError(f"unknown storage {storage!r}; choose one of: {', '.join(STORAGES)}")
    nm = parse_pattern(nm) if nm is not None else None
    weight = weight.detach().cpu()
    rows, cols = weight.shape
    meta = {"shape": [rows, cols], "bits": None}
    if quantized is not None:
        if quantized.shape != (rows, cols):
            raise InputError(f"quantized codes of shape {quantized.shape} do not fit a weight of shape {(rows, cols)}")
        if not torch.equal(quantized.dequantize().to(weight.dtype), weight):
            raise InputError("the weight differs from its dequantized codes: was the model changed after quantize_model?")
        zero_codes = quantized.zeros.repeat_interleave(quantized.group_size, dim=1)
        nonzero = quantized.codes != zero_codes  # code == zero point <=> weight exactly 0
        meta.update(bits=quantized.bits, group_size=quantized.group_size, sym=quantized.sym)
    else:
        nonzero = weight != 0
        meta["dtype"] = _dtype_name(value_dtype)

    encodings = []
    for name, position_tensors, positions in _candidates(nonzero, nm, storage):
        if quantized is None:
            values = weight if positions is None else weight[positions]
            tensors = {**position_tensors, "values": values.to(value_dtype).contiguous()}
        else:
            codes = quantized.codes if positions is None else quantized.codes[positions]
            tensors = {
                **position_tensors,
                "qweight": pack_int(codes, quantized.bits),
                "scales": quantized.scales.to(SCALE_DTYPE).contiguous(),
                "qzeros": pack_int(quantized.zeros, quantized.bits),
            }
        kept = rows * cols if positions is None else int(positions.sum())
        encodings.append(EncodedWeight({**meta, "storage": name, "kept": kept}, tensors))
    smallest = min(encodings, key=lambda e: e.nbytes)
    for encoded in encodings:  # the N:M format (what sparse kernels read) when it costs about the same
        if encoded.meta["storage"] not in ("dense", "bitmask") and encoded.nbytes <= NM_TOLERANCE * smallest.nbytes:
            return encoded
    return smallest


@torch.no_grad()
def decode_weight(meta: dict, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The ``(out, in)`` weight back from :func:`encode_weight`: float32 if quantized, else the stored dtype."""
    rows, cols = meta["shape"]
    storage = meta["storage"]
    if storage == "dense":
        positions = None
    elif storage == "bitmask":
        positions = unpack_mask(tensors["mask"], (rows, cols))
    else:
        n, m = parse_pattern(storage)
        ones = torch.ones(rows, cols // m * n, dtype=torch.uint8)
        positions = decompress_nm(CompressedNM(values=ones, indices=tensors["indices"], shape=(rows, cols), n=n, m=m)).bool()
    if meta["bits"] is None:
        values = tensors["values"]
        if positions is None:
            return values.reshape(rows, cols)
        dense = torch.zeros(rows, cols, dtype=values.dtype)
        dense[positions] = values
        return dense
    bits, group = meta["bits"], meta["group_size"]
    zeros = unpack_int(tensors["qzeros"], bits, rows * (cols // group)).reshape(rows, cols // group)
    stream = unpack_int(tensors["qweight"], bits, meta["kept"])
    if positions is None:
        codes = stream.reshape(rows, cols)
    else:
        codes = zeros.repeat_interleave(group, dim=1)
        codes[positions] = stream
    return dequantize(codes, tensors["scales"].float(), zeros)


def _model_config(model: nn.Module) -> dict:
    return json.loads(model.config.to_json_string(use_diff=False))


@torch.no_grad()
def save_compressed(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    path: str | Path,
    quantized: dict[str, QuantizedWeight] | None = None,
    *,
    storage: str = "auto",
    nm="2:4",
    float_dtype: torch.dtype | None = torch.float16,
    model_name: str | None = None,
) -> dict:
    """Write ``model`` as one compressed safetensors file; return its real size and a byte breakdown.

    ``quantized``: the integer forms from :func:`~pruning_course.quantize.model.quantize_model` (by
    full linear name); linears not in it are stored as float values. ``storage``: ``"auto"``
    (see the module docstring), ``"dense"``, ``"bitmask"`` or ``"nm"`` (the ``nm`` pattern, default 2:4).
    ``float_dtype``: dtype of every stored float (``None``: as in the model).
    """
    from safetensors.torch import save_file

    path = Path(path)
    quantized = quantized or {}
    linears = adapter.named_linears(model)
    unknown = sorted(set(quantized) - set(linears))
    if unknown:
        raise InputError(f"quantized weights for layers the model does not have: {', '.join(unknown[:3])}")

    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict] = {}
    breakdown = Counter()
    for name, module in linears.items():
        weight = weight_matrix(module)
        encoded = encode_weight(
            weight, quantized.get(name), storage=storage, nm=nm, value_dtype=float_dtype or weight.dtype
        )
        layers[name] = {**encoded.meta, "conv1d": stores_transposed(module)}  # the file's key for "stored (in, out)"
        for suffix, tensor in encoded.tensors.items():
            tensors[f"{name}.weight.{suffix}"] = tensor
            kind = "sparsity_metadata" if suffix in SPARSITY_SUFFIXES else (
                "quantization_params" if suffix in QUANT_PARAM_SUFFIXES else "linear_weights")
            breakdown[kind] += tensor.numel() * tensor.element_size()

    handled = {f"{name}.weight" for name in linears}
    aliases, seen = {}, {}
    for key, tensor in model.state_dict().items():
        if key in handled:
            continue
        identity = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))
        if identity in seen:  # tied weights: stored once
            aliases[key] = seen[identity]
            continue
        seen[identity] = key
        dtype = float_dtype if float_dtype is not None and tensor.is_floating_point() else tensor.dtype
        tensors[key] = tensor.detach().to(device="cpu", dtype=dtype).contiguous()
        breakdown["other_params"] += tensors[key].numel() * tensors[key].element_size()

    metadata = {
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "float_dtype": None if float_dtype is None else _dtype_name(float_dtype),
        "config": _model_config(model),
        "layers": layers,
        "aliases": aliases,
    }
    with writing(path) as partial:  # an interrupted save leaves no file under ``path``'s name
        save_file(tensors, partial, metadata={METADATA_KEY: json.dumps(metadata)})

    size = os.path.getsize(path)
    linear_params = sum(math.prod(meta["shape"]) for meta in layers.values())
    linear_bytes = breakdown["linear_weights"] + breakdown["sparsity_metadata"] + breakdown["quantization_params"]
    return {
        "path": str(path),
        "bytes": size,
        "breakdown": {**breakdown, "header_and_metadata": size - sum(breakdown.values())},
        "storage_per_linear": dict(Counter(meta["storage"] for meta in layers.values())),
        "linear_params": linear_params,
        "bits_per_linear_weight": 8 * linear_bytes / linear_params,
    }


class PackedLinear(nn.Module):
    """A linear layer that keeps its weight encoded and decodes it at every forward.

    Memory holds only the compressed weight (plus one decoded matrix while the layer runs):
    what a weight-only quantized or sparse model costs in RAM without dedicated kernels.
    """

    def __init__(self, meta: dict, tensors: dict[str, torch.Tensor], bias: torch.Tensor | None):
        super().__init__()
        self.meta = meta
        self.out_features, self.in_features = meta["shape"]
        self._suffixes = tuple(tensors)
        for suffix, tensor in tensors.items():
            self.register_buffer(suffix, tensor, persistent=False)
        self.register_buffer("bias", bias, persistent=False)

    def weight_matrix(self) -> torch.Tensor:
        return decode_weight(self.meta, {s: getattr(self, s) for s in self._suffixes})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_matrix().to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        bits = f"int{self.meta['bits']}" if self.meta["bits"] else self.meta["dtype"]
        return f"in={self.in_features}, out={self.out_features}, {self.meta['storage']}, {bits}"


def read_metadata(path: str | Path) -> dict:
    """The metadata :func:`save_compressed` wrote (config, per-layer storage, aliases)."""
    from safetensors import safe_open

    check_safetensors(path)
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(METADATA_KEY)
    if raw is None:
        raise InputError(f"{path} was not written by save_compressed (no '{METADATA_KEY}' metadata)")
    return json.loads(raw)


@torch.no_grad()
def load_compressed(
    path: str | Path,
    base: str | nn.Module | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    packed: bool = False,
    progress: bool = False,
):
    """Rebuild a model from :func:`save_compressed`'s file; returns a ``LoadedModel`` (model, tokenizer, adapter).

    ``base``: ``None`` builds the model from the config stored in the file (no tokenizer is
    returned); a model name or directory loads it with :func:`pruning_course.models.load_model`
    first (for its tokenizer; its weights are all replaced); a model instance is filled in place.
    Quantized weights decode to exactly their dequantized values, other floats to the stored
    ``float_dtype`` values, all cast to ``dtype`` (or the instance's dtypes). ``packed=True``
    keeps every linear encoded (:class:`PackedLinear`) instead of decoding it once.
    """
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..models import LoadedModel, load_model

    meta = read_metadata(path)
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path} has format version {meta.get('format_version')}, this code reads {FORMAT_VERSION}")
    tokenizer, empty = None, False
    if base is None:
        config = AutoConfig.for_model(**meta["config"])
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(config)
        empty = True
    elif isinstance(base, (str, Path)):
        model, tokenizer, _ = load_model(str(base), dtype=dtype, progress=progress)
    else:
        model = base
    adapter = adapter_for(model)
    linears = adapter.named_linears(model)
    if set(linears) != set(meta["layers"]):
        missing = sorted(set(meta["layers"]) ^ set(linears))
        raise InputError(f"{path} does not fit this model: layers differ (e.g. {missing[0]}); pass the base model it was saved from")

    current = model.state_dict()

    def target_dtype(key: str, tensor: torch.Tensor) -> torch.dtype:
        if not tensor.is_floating_point():
            return tensor.dtype
        return dtype if empty or key not in current else current[key].dtype

    state: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as f:  # tensors are views of the memory-mapped file until copied
        stored = {key: f.get_tensor(key) for key in f.keys()}
    for name, layer in meta["layers"].items():
        prefix = f"{name}.weight."
        parts = {key[len(prefix):]: stored.pop(key) for key in list(stored) if key.startswith(prefix)}
        if packed:
            bias = stored.pop(f"{name}.bias", None)
            parts = {suffix: tensor.clone() for suffix, tensor in parts.items()}  # own memory, not the file's pages
            replace_module(model, name, PackedLinear(layer, parts, None if bias is None else bias.to(dtype).clone()))
            continue
        weight = decode_weight(layer, parts)
        weight = weight.t() if layer["conv1d"] else weight
        key = f"{name}.weight"
        state[key] = weight.to(target_dtype(key, weight)).contiguous()
    for key, tensor in stored.items():
        converted = tensor.to(target_dtype(key, tensor))
        state[key] = converted.clone() if converted is tensor else converted
    for alias, key in meta["aliases"].items():
        state[alias] = state[key]
    model.load_state_dict(state, strict=True, assign=empty)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    model.eval()
    return LoadedModel(model, tokenizer, adapter)
