"""Helpers shared by the tests of the graded checks (pruning_course.checks.*)."""

import re

import pytest

from pruning_course.checks import CheckFailed


def fails_with(check, fn, *fragments: str) -> str:
    """Run ``check(fn)``, require a CheckFailed whose message contains every fragment; return the message."""
    with pytest.raises(CheckFailed) as info:
        check(fn)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def fails_matching(check, fn, pattern: str) -> str:
    """Like :func:`fails_with`, with one case-insensitive regular expression."""
    with pytest.raises(CheckFailed) as info:
        check(fn)
    message = str(info.value)
    assert re.search(pattern, message, re.IGNORECASE), message
    return message


def not_implemented(*_args, **_kwargs):
    """An exercise as the student version ships it."""
    raise NotImplementedError()
