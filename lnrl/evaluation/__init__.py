"""Evaluation: held-out metrics of a model (`metrics`: answer accuracy, generation length, degenerate
rate, gold NLL), assessment accuracy over candidate CoTs (`assessment`), lm-evaluation-harness's gsm8k
protocol (`harness`) and pass@k / maj@k from samples (`samples`). The lnrl-eval app and the
GenerationEval callback both call `evaluate_model` and write its records with `EvalResult.write_records`."""

from lnrl.evaluation.assessment import assessment_accuracy, ordered_share, score_texts
from lnrl.evaluation.harness import harness_accuracy
from lnrl.evaluation.metrics import (
    PROTOCOLS,
    RECORD_FILES,
    EvalResult,
    answer_accuracy,
    check_protocol,
    evaluate_model,
    gold_nll,
    near_miss_ids,
)
from lnrl.evaluation.samples import SampleSpec, sample_accuracy

__all__ = ["PROTOCOLS", "RECORD_FILES", "EvalResult", "SampleSpec", "answer_accuracy", "assessment_accuracy",
           "check_protocol", "evaluate_model", "gold_nll", "harness_accuracy", "near_miss_ids", "ordered_share",
           "sample_accuracy", "score_texts"]
