"""What the benchmark scripts share: the core protocol's options and a description of the machine.

The scripts run as ``python benchmarks/<name>.py``, so this folder is on ``sys.path`` and they
import this module as ``_common``.
"""

from __future__ import annotations

import argparse
import os
import platform


def protocol_parser(doc: str | None, *, max_eval_windows: int | None = None) -> argparse.ArgumentParser:
    """A parser holding the one-shot protocol of the SparseGPT and Wanda papers, as ``one_shot.py`` runs it.

    ``--calib-samples`` windows of ``--seqlen`` tokens drawn from the train split with ``--seed``;
    perplexity over non-overlapping ``--seqlen`` windows of the test split (all of them, or the first
    ``--max-eval-windows``, whose default each script sets: say it next to the numbers).
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seqlen", type=int, default=512, help="tokens per calibration and test window")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-eval-windows", type=int, default=max_eval_windows,
                        help=f"first N test windows (default: {max_eval_windows or 'the full test split'})")
    return parser


# Packages whose versions can move a recorded number; constraints.txt pins them (and the rest).
NUMERIC_PACKAGES = ("transformers", "tokenizers", "numpy", "gensim", "safetensors", "gguf", "datasets")


def machine() -> dict:
    """Where the numbers were measured: CPU, core count, Python, torch and the threads torch uses
    now, and the versions of the other packages a number depends on."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "versions": {name: installed(name) for name in NUMERIC_PACKAGES}}
