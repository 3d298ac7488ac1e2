"""Answer extraction and equivalence, and the MathVerifier error profile (docs/verifier.md)."""

from lnrl.verify.answers import (
    EXTRACTION_KINDS,
    answers_match,
    extract_answer,
    extract_answer_with_kind,
    grade_answer,
    normalize_number,
    numbers_match,
    parse_number,
)
from lnrl.verify.arith import Step, evaluate, find_steps
from lnrl.verify.profile import (
    ABSURDITY_WEIGHTS,
    DIMENSIONS,
    SCORES,
    VERIFIER_VERSION,
    WRONGNESS_WEIGHTS,
    Analysis,
    ErrorProfile,
    MathVerifier,
    is_degenerate,
)

__all__ = [
    "ABSURDITY_WEIGHTS",
    "DIMENSIONS",
    "EXTRACTION_KINDS",
    "SCORES",
    "VERIFIER_VERSION",
    "WRONGNESS_WEIGHTS",
    "Analysis",
    "ErrorProfile",
    "MathVerifier",
    "Step",
    "answers_match",
    "evaluate",
    "extract_answer",
    "extract_answer_with_kind",
    "find_steps",
    "grade_answer",
    "is_degenerate",
    "normalize_number",
    "numbers_match",
    "parse_number",
]
