"""pruning-course: reference implementations for a hands-on course on pruning and sparsity in LLMs."""

__version__ = "0.1.0"
