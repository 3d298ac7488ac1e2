"""Answer extraction and equivalence, and the MathVerifier error profile."""

from lnrl.verify.answers import (
    answers_match,
    extract_answer,
    extract_answer_with_kind,
    normalize_number,
    parse_number,
)

__all__ = [
    "answers_match",
    "extract_answer",
    "extract_answer_with_kind",
    "normalize_number",
    "parse_number",
]
