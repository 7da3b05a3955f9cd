"""Notebook 12_curation: the wrong answers of tests/test_checks_curation.py, and more."""

from pruning_course.checks.curation import (check_is_section_header, check_is_long_enough, check_exact_dedup, check_minhash_of, check_lsh_near_duplicates, check_pack_batch)

from . import Wrong, crashes, forgot_return
from .harvest import harvest
from .solutions import notebook

SOLUTION = notebook("12_curation")
REFERENCES = {check_is_section_header: SOLUTION["is_section_header"], check_is_long_enough: SOLUTION["is_long_enough"],
              check_exact_dedup: SOLUTION["exact_dedup"], check_minhash_of: SOLUTION["minhash_of"],
              check_lsh_near_duplicates: SOLUTION["lsh_near_duplicates"], check_pack_batch: SOLUTION["pack_batch"]}

WRONG = harvest("test_checks_curation") + [
    Wrong(check_is_section_header, "crashes", crashes(IndexError, "string index out of range"), r"raised IndexError"),
    Wrong(check_is_section_header, "forgot return", forgot_return(SOLUTION["is_section_header"]), r"forget `return`"),
    Wrong(check_is_long_enough, "crashes", crashes(AttributeError, "'list' object has no attribute 'strip'"),
          r"raised AttributeError"),
    Wrong(check_is_long_enough, "forgot return", forgot_return(SOLUTION["is_long_enough"]), r"forget `return`"),
    Wrong(check_exact_dedup, "crashes", crashes(KeyError, "'text'"), r"raised KeyError"),
    Wrong(check_minhash_of, "crashes", crashes(TypeError, "Strings must be encoded before hashing"), r"raised TypeError"),
    Wrong(check_lsh_near_duplicates, "crashes", crashes(ValueError, "The given key already exists"), r"raised ValueError"),
    Wrong(check_pack_batch, "crashes", crashes(KeyError, "'text'"), r"raised KeyError"),
]
