"""The one exception type for bad input: what the caller asked for cannot be done as asked.

Every validation in the package raises :class:`InputError`, a ``ValueError`` (so ``except
ValueError`` and the docstrings' "raises ValueError" stay true), with a message that says what to
do. The CLI prints it as one line and exits with status 2; any other exception is a bug in the
package and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input (an argument, a file, a model, a pattern that does not fit): the message says what to do."""
