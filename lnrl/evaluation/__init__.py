"""Evaluation: held-out metrics of a model (`metrics`: answer accuracy, generation length, degenerate
rate, gold NLL) and assessment accuracy over candidate CoTs (`assessment`). The lnrl-eval app and the
GenerationEval callback both call `evaluate_model`."""

from lnrl.evaluation.assessment import assessment_accuracy, ordered_share, score_texts
from lnrl.evaluation.metrics import EvalResult, answer_accuracy, evaluate_model, gold_nll, near_miss_ids

__all__ = ["EvalResult", "answer_accuracy", "near_miss_ids", "assessment_accuracy", "evaluate_model", "gold_nll", "ordered_share", "score_texts"]
