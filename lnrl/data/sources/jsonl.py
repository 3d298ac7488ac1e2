"""Any JSONL (or JSON list) of math problems, with configurable field names."""

from __future__ import annotations

from lnrl.data.records import DataError, get_field
from lnrl.data.sources.files import train_eval
from lnrl.data.sources.registry import SourceSplit, normalize_answer, register_source


@register_source("jsonl")
def jsonl(path: str, question_field: str = "question", solution_field: str = "solution",
          answer_field: str | None = None, eval_path: str | None = None, n_train: int | None = None,
          n_eval: int | None = None, eval_fraction: float = 0.1, seed: int = 0,
          on_error: str = "raise") -> SourceSplit:
    """Any JSONL (or JSON list) with configurable field names. Without answer_field the answer is
    extracted from the solution ("#### N", "The answer is: X", \\boxed{}, last number)."""
    from lnrl.verify.answers import extract_answer

    def parse(row: dict, loc: str):
        question = get_field(row, question_field, str, loc, nonempty=True)
        solution = get_field(row, solution_field, str, loc, nonempty=True).strip()
        if answer_field is not None:
            raw = get_field(row, answer_field, (str, int, float), loc)
            answer, field_name = normalize_answer(str(raw)), answer_field
        else:
            answer, field_name = extract_answer(solution) or "", solution_field
        if not answer:
            raise DataError(f"{loc}: field '{field_name}': empty answer")
        return question.strip(), solution, answer, {}

    return train_eval("jsonl", path, parse, eval_path=eval_path, hub_config=None, hub_eval_split=None,
                      n_train=n_train, n_eval=n_eval, eval_fraction=eval_fraction, seed=seed, on_error=on_error)
