"""The ``pruning-course`` command.

    pruning-course prune   --model smollm2-135m --method wanda --sparsity 0.5 [--pattern 2:4] --eval --json OUT [--save DIR]
                           (--method ria [--pattern 2:4 --permute], --method dsnot [--base sparsegpt])
    pruning-course eval    --model M_OR_DIR --json OUT
    pruning-course compare [--json OUT] [--plot PNG]     # the course's headline table
    pruning-course prune ... --dataset python-stdlib --calib-dataset wiki-sample+python-stdlib
    pruning-course generate | validate | grade           # the nbgrader course (instructors)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import InputError
from . import settings
from .model_files import check_writable_dir, check_writable_file, save_model_dir, writing


class UsageError(InputError):
    """Bad input from the command line: printed as one clear line, exit status 2."""


# ---------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------


def _defaults() -> dict:
    """Defaults of the model-facing commands: the embedded model, or a tiny one in quick mode."""
    if settings.quick_mode():
        return {"model": "tiny-llama", "calib_samples": 4, "seqlen": 128, "max_eval_windows": 8}
    return {"model": "smollm2-135m", "calib_samples": 32, "seqlen": 512, "max_eval_windows": None}


def _add_model_args(parser: argparse.ArgumentParser, defaults: dict) -> None:
    parser.add_argument("--model", default=defaults["model"], help="short name (smollm2-135m, tiny-llama, ...), local directory or hub id")
    parser.add_argument("--dataset", default="wiki-sample",
                        help="evaluation corpus (and calibration corpus unless --calib-dataset): wiki-sample (embedded Wikipedia) or python-stdlib (this Python's "
                             "standard library), both offline; wikitext2, codeparrot-valid, or a hub dataset owner/name")
    parser.add_argument("--seqlen", type=int, default=defaults["seqlen"], help="tokens per calibration and evaluation window")
    parser.add_argument("--max-eval-windows", type=int, default=defaults["max_eval_windows"], help="evaluate on the first N test windows only (default: all)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights and compute dtype (the papers' numbers are float32)")
    parser.add_argument("--device", default=None, help="device for calibration and evaluation (default: cpu, or PRUNING_COURSE_DEVICE)")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    parser.add_argument("--json", dest="json_out", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_prune_args(parser: argparse.ArgumentParser, defaults: dict) -> None:
    parser.add_argument("--calib-samples", type=int, default=defaults["calib_samples"], help="calibration windows (Wanda, SparseGPT)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration sampler")
    parser.add_argument("--calib-dataset", default=None,
                        help="calibration corpus (default: --dataset), or a mix such as wiki-sample+python-stdlib: "
                             "equal numbers of windows from each (the first named takes an odd one), same --seed")


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UsageError(f"--{name} must be a positive integer, got {value}")


def _check_device(name: str) -> str:
    """``name`` if torch can run on that device here, else a :class:`UsageError` that says what to use."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device torch knows; use cpu, or cuda on a machine with a GPU") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: torch finds no CUDA GPU on this machine "
                             f"(torch {torch.__version__}); run with --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"numbered from 0")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: the Apple MPS backend is not available here; run with --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name}: only cpu, cuda and mps are supported")
    return name


def _check_outputs(args, save_dir: bool = False) -> None:
    """Refuse unwritable ``--json``, ``--save`` and ``--plot`` targets before anything is loaded."""
    if getattr(args, "json_out", None) is not None:
        check_writable_file(args.json_out, "--json")
    if getattr(args, "plot", None) is not None:
        from matplotlib.backend_bases import FigureCanvasBase

        formats = FigureCanvasBase.get_supported_filetypes()
        if args.plot.suffix.lstrip(".").lower() not in formats:
            raise UsageError(f"--plot {args.plot}: give a file name ending in a picture format "
                             f"(.png, .pdf, .svg, ...), got {args.plot.suffix or 'no suffix'!r}")
        check_writable_file(args.plot, "--plot")
    if getattr(args, "save", None) is not None:
        if save_dir:
            check_writable_dir(args.save, "--save")
        else:
            check_writable_file(args.save, "--save")


def _check_seqlen(model, seqlen: int, name: str) -> None:
    from .models import context_length

    limit = context_length(model)
    if limit is not None and seqlen > limit:
        raise UsageError(f"--seqlen {seqlen} is beyond the context of {name} ({limit} tokens); "
                         f"use --seqlen {min(512, limit)} (the papers' windows are 2048 tokens or fewer)")


def _load_from_args(args):
    """The model named by ``--model``; a compressed file from ``quantize --save`` is decoded onto its base model.

    Refuses a ``--seqlen`` longer than the model's context before any work is done with it."""
    import torch

    from .models import load_model

    device = _check_device(args.device or settings.default_device())
    dtype = getattr(torch, args.dtype)
    if Path(args.model).is_file():
        from .quantize import load_compressed, read_metadata

        base = read_metadata(args.model).get("model_name")
        if base is None:
            raise UsageError(f"{args.model} does not name its base model, so there is no tokenizer to evaluate it with")
        loaded = load_compressed(args.model, base, dtype=dtype, progress=not args.quiet)
        loaded.model.to(device)
    else:
        loaded = load_model(args.model, dtype=dtype, device=device, progress=not args.quiet)
    _check_seqlen(loaded.model, args.seqlen, args.model)
    return loaded, device


def _check_datasets(args) -> None:
    """Refuse a bad ``--dataset`` or ``--calib-dataset`` before anything is loaded; resolve the default
    ``--calib-dataset`` (the evaluation corpus)."""
    from .data import MIX_SEPARATOR, check_corpus_name, parse_corpus_mix

    if MIX_SEPARATOR in args.dataset:
        raise UsageError(f"--dataset {args.dataset!r}: perplexity is measured on one corpus at a time; "
                         f"a mix is for --calib-dataset")
    check_corpus_name(args.dataset)
    if hasattr(args, "calib_dataset"):
        args.calib_dataset = args.calib_dataset or args.dataset
        corpora = parse_corpus_mix(args.calib_dataset)
        if len(corpora) > args.calib_samples:
            raise UsageError(f"--calib-samples {args.calib_samples} cannot be shared among the {len(corpora)} "
                             f"corpora of --calib-dataset {args.calib_dataset}: use at least {len(corpora)}")


def _token_splits(tokenizer, dataset: str, loaded: dict | None = None):
    """The token splits of ``dataset``, each corpus tokenized once per command (``loaded`` keeps them)."""
    from .data import load_token_splits

    if loaded is None:
        return load_token_splits(tokenizer, dataset)
    if dataset not in loaded:
        loaded[dataset] = load_token_splits(tokenizer, dataset)
    return loaded[dataset]


def _calibration_windows(tokenizer, args, loaded: dict):
    """``--calib-samples`` windows of ``--seqlen`` from the train split of ``--calib-dataset`` (or its mix)."""
    from .data import mixed_calibration_windows, parse_corpus_mix

    train = {name: _token_splits(tokenizer, name, loaded)["train"] for name in parse_corpus_mix(args.calib_dataset)}
    return mixed_calibration_windows(train, args.calib_samples, args.seqlen, args.seed)


def _dataset_fields(args, calibrated: bool) -> dict:
    """The corpora of a record and what they depend on (the Python version for python-stdlib)."""
    from .data import dataset_version

    fields = {"dataset": args.dataset, "dataset_version": dataset_version(args.dataset)}
    if hasattr(args, "calib_dataset"):
        fields.update(calib_dataset=args.calib_dataset if calibrated else None,
                      calib_dataset_version=dataset_version(args.calib_dataset) if calibrated else None)
    return fields


def _evaluate(model, adapter, test_ids, args, device) -> dict:
    from .evaluate import perplexity

    result = perplexity(
        model, test_ids, args.seqlen, batch_size=args.batch_size, max_windows=args.max_eval_windows,
        device=device, progress=not args.quiet,
    )
    return result.record()


def _measure_options(args, device) -> dict:
    import torch

    calib_dtype = {"float32": None, "bfloat16": torch.bfloat16}[getattr(args, "calib_dtype", "float32")]
    return {"seqlen": args.seqlen, "max_eval_windows": args.max_eval_windows, "batch_size": args.batch_size,
            "device": device, "progress": not args.quiet, "calib_dtype": calib_dtype}


def _add_calib_dtype(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calib-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="dtype of the calibration forwards (bfloat16: faster on CPUs with bf16 units; "
                             "statistics, pruning and the pruned model stay float32)")


def _write_json(path: Path | None, payload) -> None:
    if path is None:
        return
    with writing(path) as partial:
        partial.write_text(json.dumps(payload, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def _method_options(args, nm) -> dict:
    """The method's own options from ``prune``'s flags (RIA's ``--permute``, DSnoT's ``--base``),
    checked before anything is loaded."""
    from .methods import get_method
    from .unstructured.ria import check_permutation

    options = {}
    if args.permute:
        if args.method != "ria":
            raise UsageError(f"--permute is RIA's channel permutation for N:M; it does not apply to --method {args.method}")
        check_permutation(True, nm)
        options["permute"] = True
    if args.base is not None:
        if args.method != "dsnot":
            raise UsageError(f"--base names the mask DSnoT starts from; it does not apply to --method {args.method}")
        options["base"] = args.base
    if args.method == "dsnot":
        options.setdefault("base", "wanda")  # recorded, so the JSON says which mask DSnoT edited
    get_method(args.method).check_options(options)
    return options


def cmd_prune(args) -> int:
    from .evaluate import prune_and_measure
    from .masks import resolve_target
    from .methods import check_method, needs_calibration
    from .unstructured.owl import owl_sparsities

    check_method(args.method)
    _, nm = resolve_target(args.sparsity, args.pattern)  # fail on bad input before loading anything
    options = _method_options(args, nm)
    _positive("calib-samples", args.calib_samples)
    _check_datasets(args)
    _check_outputs(args, save_dir=True)
    owl = None
    if args.owl:
        if args.pattern:
            raise InputError("--owl sets one unstructured sparsity per block; it cannot be combined with --pattern")
        owl = (args.owl_m, args.owl_lambda)
        owl_sparsities([0.0, 1.0], args.sparsity, args.owl_lambda)  # a lambda too large for the target fails here
        if args.calib_dtype != "float32":
            raise InputError("--owl calibrates in float32 only: drop --calib-dtype")
    (model, tokenizer, adapter), device = _load_from_args(args)
    loaded: dict = {}
    windows = None
    if needs_calibration(args.method) or owl:
        windows = _calibration_windows(tokenizer, args, loaded)
    test_ids = _token_splits(tokenizer, args.dataset, loaded)["test"] if args.eval else None
    record = prune_and_measure(
        model, adapter, args.method, args.sparsity, args.pattern, windows, owl=owl,
        test_ids=test_ids, **_measure_options(args, device), **options,
    )
    record.update(model=args.model, **_dataset_fields(args, windows is not None), seed=args.seed, seqlen=args.seqlen,
                  **options)
    print(_format_table([record]), flush=True)  # the result is out before anything can fail to save
    _write_json(args.json_out, record)
    if args.save:
        save_model_dir(model, tokenizer, args.save, progress=not args.quiet)
        record["saved_to"] = str(args.save)
        _write_json(args.json_out, record)
        print(f"saved the pruned model to {args.save}")
    return 0


def cmd_eval(args) -> int:
    from .evaluate import peak_rss_mb, sparsity_report

    _check_datasets(args)
    _check_outputs(args)
    (model, tokenizer, adapter), device = _load_from_args(args)
    splits = _token_splits(tokenizer, args.dataset)
    record = {"model": args.model, **_dataset_fields(args, False), "sparsity": sparsity_report(model, adapter)["sparsity"]}
    record.update(_evaluate(model, adapter, splits["test"], args, device))
    record["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(f"{args.model}: perplexity {record['ppl']:.3f} on {args.dataset} test "
          f"(seqlen {record['seqlen']}, {record['eval_tokens']:,} tokens), sparsity {record['sparsity']:.3f}", flush=True)
    _write_json(args.json_out, record)
    return 0


def cmd_quantize(args) -> int:
    """Optionally prune, then quantize (RTN or GPTQ) every prunable linear; evaluate; save a real compressed file."""
    from .evaluate import peak_rss_mb, sparsity_report
    from .masks import resolve_target
    from .methods import check_method, check_pattern_fits, needs_calibration, prune_model
    from .quantize import check_group_fits, default_group_size, quantize_model, save_compressed
    from .quantize.rtn import check_bits

    check_bits(args.bits)  # fail on bad input before loading anything
    if args.method not in ("rtn", "gptq"):
        raise UsageError(f"unknown quantization method {args.method!r}; choose rtn or gptq")
    if args.group_size is not None and args.group_size != -1 and args.group_size < 1:
        raise UsageError(f"--group-size must be a positive integer or -1 (one group per row), got {args.group_size}")
    target = nm = None
    if args.prune:
        check_method(args.prune)
        target, nm = resolve_target(args.sparsity, args.pattern)
    elif args.sparsity is not None or args.pattern:
        raise UsageError("--sparsity/--pattern need --prune METHOD (magnitude, wanda or sparsegpt)")
    _positive("calib-samples", args.calib_samples)
    if args.save and args.save.suffix != ".safetensors":
        raise UsageError(f"--save writes one compressed safetensors file: give a path ending in .safetensors, got {args.save}")
    _check_datasets(args)
    _check_outputs(args)

    (model, tokenizer, adapter), device = _load_from_args(args)
    if args.group_size is None:
        args.group_size = default_group_size(model, adapter)
    check_group_fits(model, adapter, args.group_size)
    if nm:
        check_pattern_fits(model, adapter, nm)
    loaded: dict = {}
    windows = None
    if args.method == "gptq" or (args.prune and needs_calibration(args.prune)):
        windows = _calibration_windows(tokenizer, args, loaded)
    options = {"batch_size": args.batch_size, "device": device, "progress": not args.quiet}
    start = time.perf_counter()
    masks = prune_model(model, adapter, args.prune, target, nm, windows=windows, **options) if args.prune else None
    quantized = quantize_model(model, adapter, args.method, args.bits, args.group_size, windows, sym=args.sym,
                               masks=masks, **options)
    record = {
        "model": args.model, **_dataset_fields(args, windows is not None), "seed": args.seed, "seqlen": args.seqlen,
        "method": f"{args.prune}+{args.method}" if args.prune else args.method,
        "pattern": (f"{nm[0]}:{nm[1]}" if nm else "unstructured") if args.prune else "dense",
        "bits": args.bits, "group_size": args.group_size, "sym": args.sym,
        "sparsity": sparsity_report(model, adapter)["sparsity"],
        "calib_samples": len(windows) if windows is not None else 0,
        "prune_seconds": round(time.perf_counter() - start, 3),
    }
    if args.eval:
        record.update(_evaluate(model, adapter, _token_splits(tokenizer, args.dataset, loaded)["test"], args, device))
    record["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(_format_table([record]), flush=True)  # the result is out before anything can fail to save
    _write_json(args.json_out, record)
    if args.save:
        saved = save_compressed(model, adapter, args.save, quantized, storage=args.storage, model_name=args.model)
        record.update(saved_to=str(args.save), bytes_on_disk=saved["bytes"],
                      bits_per_linear_weight=saved["bits_per_linear_weight"])
        _write_json(args.json_out, record)
        print(f"saved {record['bytes_on_disk']:,} bytes to {args.save} "
              f"({record['bits_per_linear_weight']:.2f} bits per linear weight)")
    return 0


COMPARE_METHODS = ("magnitude", "wanda", "sparsegpt")  # the headline table's default; --methods takes any registered one
COMPARE_PATTERNS = ("unstructured", "2:4")


def cmd_compare(args) -> int:
    import torch

    from .evaluate import prune_and_measure
    from .masks import parse_pattern
    from .methods import REGISTRY

    methods = args.methods.split(",")
    patterns = args.patterns.split(",")
    for method in methods:
        if method not in REGISTRY:
            raise UsageError(f"unknown method {method!r} in --methods; choose from {', '.join(REGISTRY)}")
    for pattern in patterns:
        parse_pattern(pattern)
    _positive("calib-samples", args.calib_samples)
    _check_datasets(args)
    _check_outputs(args)

    (model, tokenizer, adapter), device = _load_from_args(args)
    loaded: dict = {}
    windows = _calibration_windows(tokenizer, args, loaded)
    splits = _token_splits(tokenizer, args.dataset, loaded)
    dense_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    runs = [("dense", None)] + [(m, p) for p in patterns for m in methods]
    records = []
    for method, pattern in runs:
        model.load_state_dict(dense_state)
        sparsity = None if pattern not in (None, "unstructured") else args.sparsity
        record = prune_and_measure(model, adapter, method, sparsity, None if pattern == "unstructured" else pattern,
                                   windows, test_ids=splits["test"], **_measure_options(args, device))
        records.append(record)
        if not args.quiet:
            print(_format_table([record], header=False), file=sys.stderr)
    model.load_state_dict(dense_state)

    summary = {
        "model": args.model, **_dataset_fields(args, True), "seqlen": args.seqlen, "seed": args.seed,
        "calib_samples": args.calib_samples, "torch_threads": torch.get_num_threads(), "results": records,
    }
    print(f"\n{args.model} on {args.dataset} (test perplexity at seqlen {args.seqlen}, "
          f"{records[0]['eval_tokens']:,} tokens; {args.calib_samples} calibration windows of {args.calib_dataset})")
    print(_format_table(records), flush=True)
    _write_json(args.json_out, summary)
    if args.plot:
        plot_comparison(records, args.plot, title=f"{args.model} on {args.dataset}")
        print(f"plot written to {args.plot}")
    return 0


TABLE_COLUMNS = (  # (record key, title, width, format)
    ("method", "method", 10, "<"), ("pattern", "pattern", 12, "<"), ("sparsity", "sparsity", 8, ">.3f"),
    ("ppl", "ppl", 10, ">.2f"), ("prune_seconds", "prune s", 8, ">.1f"), ("peak_rss_mb", "peak MB", 8, ">.0f"),
)


def _format_table(records: list[dict], header: bool = True) -> str:
    lines = ["  ".join(f"{title:{'<' if fmt == '<' else '>'}{width}}" for _, title, width, fmt in TABLE_COLUMNS)] if header else []
    for record in records:
        cells = [f"{record[key]:{fmt[0]}{width}{fmt[1:]}}" if key in record else f"{'-':>{width}}" for key, _, width, fmt in TABLE_COLUMNS]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def plot_comparison(records: list[dict], path: Path, title: str = "") -> None:
    """Grouped bar chart of perplexity (log scale) per method and pattern."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = next((r["ppl"] for r in records if r["method"] == "dense"), None)
    pruned = [r for r in records if r["method"] != "dense"]
    patterns = list(dict.fromkeys(r["pattern"] for r in pruned))
    methods = list(dict.fromkeys(r["method"] for r in pruned))
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, method in enumerate(methods):
        values = [next((r["ppl"] for r in pruned if r["method"] == method and r["pattern"] == p), float("nan")) for p in patterns]
        bars = ax.bar([x + i * width for x in range(len(patterns))], values, width, label=method)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    if dense is not None:
        ax.axhline(dense, color="black", linestyle="--", linewidth=1, label=f"dense ({dense:.1f})")
    ax.set_xticks([x + width * (len(methods) - 1) / 2 for x in range(len(patterns))], [f"50% {p}" if p == "unstructured" else p for p in patterns])
    ax.set_yscale("log")
    ax.set_ylabel("test perplexity (log scale)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with writing(path) as partial:
        fig.savefig(partial, dpi=120, format=Path(path).suffix.lstrip(".").lower() or "png")
    plt.close(fig)


def cmd_generate(args) -> int:
    from .grading import generate

    paths = generate(args.solutions, args.notebooks, args.assignments)
    for path in paths:
        print(f"  {path}")
    print(f"{len(paths)} student notebook(s) up to date in {args.notebooks}/")
    return 0


def cmd_validate(args) -> int:
    from .grading import validate

    report = validate(args.solutions, args.notebooks, args.assignments, timeout=args.timeout, quick=not args.full)
    print(report)
    return 0 if report.ok else 1


def cmd_grade(args) -> int:
    from .grading import grade

    report = grade(args.submissions, args.out, solutions_dir=args.solutions, timeout=args.timeout,
                   quick=not args.full, wall_timeout=args.wall_timeout, sandbox=not args.no_sandbox,
                   jobs=args.jobs, shard=args.shard)
    print(report)
    return 0


def cmd_grade_merge(args) -> int:
    from .grading import merge_outputs

    print(merge_outputs(args.inputs, args.out, solutions_dir=args.solutions))
    return 0


def _shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N (e.g. 3/8), got {text!r}") from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"K/N needs 1 <= K <= N, got {text!r}")
    return k, n


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of students at a time, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    defaults = _defaults()
    parser = argparse.ArgumentParser(prog="pruning-course", description="Prune LLMs and measure them; run the nbgrader course.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="prune one model with one method, optionally evaluate and save it")
    _add_model_args(p, defaults)
    _add_prune_args(p, defaults)
    _add_calib_dtype(p)
    p.add_argument("--method", required=True, help="magnitude, wanda, sparsegpt, ria or dsnot")
    p.add_argument("--permute", action="store_true", help="ria with an N:M --pattern: channel permutation before choosing the mask")
    p.add_argument("--base", default=None, help="dsnot: the method whose mask DSnoT edits (wanda, the default, sparsegpt, magnitude or ria)")
    p.add_argument("--sparsity", type=float, default=None, help="fraction of weights to remove, in (0, 1)")
    p.add_argument("--pattern", default=None, help="N:M semi-structured pattern, e.g. 2:4 (implies sparsity 1 - N/M)")
    p.add_argument("--eval", action="store_true", help="measure test perplexity after pruning")
    p.add_argument("--save", type=Path, help="save the pruned model (save_pretrained) to this directory")
    p.add_argument("--owl", action="store_true", help="OWL layer-wise sparsities (Yin et al. 2024) with mean --sparsity")
    p.add_argument("--owl-m", type=float, default=5.0, help="OWL: a weight is an outlier above M times its block's mean score")
    p.add_argument("--owl-lambda", type=float, default=0.08, help="OWL: block sparsities spread over a band 2*lambda wide")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("quantize", help="RTN or GPTQ quantization (optionally after pruning), evaluated and saved compressed")
    _add_model_args(p, defaults)
    _add_prune_args(p, defaults)
    p.add_argument("--method", default="gptq", help="rtn or gptq (default)")
    p.add_argument("--bits", type=int, default=4, help="bits per weight: 2, 3, 4 or 8")
    p.add_argument("--group-size", type=int, default=None, help="weights per scale along the input dim (-1: one per row); must divide every input width (default: 128, or the largest of 64, 32 that fits: 64 for SmolLM2)")
    p.add_argument("--sym", action="store_true", help="symmetric grid (no zero point)")
    p.add_argument("--prune", default=None, help="prune first with this method (magnitude, wanda, sparsegpt); pruned weights stay zero")
    p.add_argument("--sparsity", type=float, default=None, help="with --prune: fraction of weights to remove")
    p.add_argument("--pattern", default=None, help="with --prune: N:M pattern, e.g. 2:4")
    p.add_argument("--eval", action="store_true", help="measure test perplexity")
    p.add_argument("--save", type=Path, help="write one compressed .safetensors file (packed ints, bitmask or 2:4 indices)")
    p.add_argument("--storage", default="auto", choices=["auto", "dense", "bitmask", "nm"], help="how sparse weights are stored")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("eval", help="perplexity and sparsity of a model, saved directory or compressed file")
    _add_model_args(p, defaults)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="dense vs magnitude, Wanda, SparseGPT at 50%% and 2:4 (the headline table)")
    _add_model_args(p, defaults)
    _add_prune_args(p, defaults)
    _add_calib_dtype(p)
    p.add_argument("--sparsity", type=float, default=0.5, help="unstructured sparsity to compare at")
    p.add_argument("--methods", default=",".join(COMPARE_METHODS))
    p.add_argument("--patterns", default=",".join(COMPARE_PATTERNS), help="comma-separated: unstructured and/or N:M patterns")
    p.add_argument("--plot", type=Path, help="write a bar chart PNG here")
    p.set_defaults(func=cmd_compare)

    def course_args(p: argparse.ArgumentParser, execute: bool) -> None:
        p.add_argument("--solutions", default="solutions", help="instructor source notebooks (nbgrader source format)")
        if execute:
            p.add_argument("--timeout", type=int, default=300, help="seconds allowed per notebook cell")
            p.add_argument("--full", action="store_true", help="execute in full mode (real model) instead of quick mode")

    p = sub.add_parser("generate", help="student notebooks from solutions/ (nbgrader generate_assignment)")
    course_args(p, execute=False)
    p.add_argument("--notebooks", default="notebooks")
    p.add_argument("--assignments", nargs="*", help="only these assignments (default: all)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("validate", help="solutions score full marks, unmodified student notebooks zero, no drift")
    course_args(p, execute=True)
    p.add_argument("--notebooks", default="notebooks")
    p.add_argument("--assignments", nargs="*", help="only these assignments (default: all)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("grade", help="autograde a folder or zip of submissions: feedback HTML + grades CSV")
    course_args(p, execute=True)
    p.add_argument("submissions", help="folder or .zip of submitted notebooks")
    p.add_argument("--out", required=True, help="output folder for feedback/, grades.csv and the gradebook")
    p.add_argument("--wall-timeout", type=float, default=None, help="seconds allowed per student notebook in all")
    p.add_argument("--no-sandbox", action="store_true",
                   help="UNSAFE: run the students' code without the bubblewrap sandbox, as you, with your files, "
                        "network and grades within its reach (only for submissions you trust, on a machine "
                        "without bubblewrap)")
    p.add_argument("--jobs", type=_jobs, default=None,
                   help="students graded side by side, each in its own course folder (default: one per core)")
    p.add_argument("--shard", type=_shard, default=None, metavar="K/N",
                   help="grade only shard K of N (by a hash of the student id; the same on every machine), e.g. "
                        "one shard per task of a Slurm array; combine the outputs with `pruning-course grade merge`")
    p.set_defaults(func=cmd_grade)

    p = sub.add_parser("grade-merge", help=argparse.SUPPRESS, prog="pruning-course grade merge",
                       description="combine the output folders of several `grade --shard` runs into one")
    p.add_argument("inputs", nargs="+", type=Path, help="output folders of grade runs")
    p.add_argument("--out", required=True, help="the combined output folder")
    p.add_argument("--solutions", default="solutions", help="the solutions the inputs were graded with")
    p.set_defaults(func=cmd_grade_merge)
    return parser


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors caused by the input or the environment: one clear line and exit status 2, no traceback.

    A plain ``ValueError`` (or any other exception) is not among them: it is a bug, and keeps its traceback."""
    from .grading import GradingError
    from .model_files import ModelFileError
    from .models import ModelUnavailableError

    return InputError, ModelFileError, OSError, ConnectionError, GradingError, ModelUnavailableError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["grade", "merge"]:  # `grade merge` (a submissions folder named merge: grade ./merge)
        argv = ["grade-merge", *argv[2:]]
    args = parser.parse_args(argv)
    for name in ("seqlen", "batch_size", "max_eval_windows"):
        try:
            _positive(name.replace("_", "-"), getattr(args, name, None))
        except UsageError as error:
            parser.error(str(error))
    settings.keep_torch_cache_out_of_tmp()
    try:
        return args.func(args)
    except _user_errors() as error:
        print(f"pruning-course {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\npruning-course {args.command}: interrupted; results already printed are kept, "
              "and nothing half-written was left behind", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
