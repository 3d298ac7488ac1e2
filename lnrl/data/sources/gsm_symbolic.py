"""reasoning-gym's GSM-Symbolic templates (the embedded default), held out by template id or by instance."""

from __future__ import annotations

import random
import re
import signal
import threading
from collections.abc import Callable

from lnrl.data.records import DataError, Example, check_on_error
from lnrl.data.sources.registry import SourceSplit, normalize_answer, register_source

GSM_SYMBOLIC_SUFFIX = " Give the result as your final answer. Do not include units."
_HASH_LINE = re.compile(r"\n####[ \t]*([^\n]*)\s*$")


def _symbolic_example(raw: dict, template: int, k: int, split: str, key_prefix: str = "") -> Example:
    """One generator output as an Example; ValueError when it is unusable."""
    answer = normalize_answer(str(raw["answer"]))
    cot = str(raw["metadata"]["answer_cot"]).rstrip()
    m = _HASH_LINE.search(cot)
    if not answer or m is None:
        raise ValueError("no answer or no '#### N' line")
    # A few templates print "#### 16.0" for answer 16: end every gold CoT with the normalized answer
    # so the model learns one format.
    if normalize_answer(m.group(1)) != answer:
        raise ValueError(f"CoT ends with {m.group(1)!r} but the answer is {answer!r}")
    cot = cot[: m.start()] + f"\n#### {answer}"
    return Example(id=f"gsm_symbolic/{key_prefix}t{template}/{k}", question=str(raw["question"]) + GSM_SYMBOLIC_SUFFIX,
                   solution=cot, answer=answer, source="gsm_symbolic",
                   meta={"template": template, "index": k, "split": split})


SPLIT_BY = ("template", "instance")
GENERATOR_TIMEOUT_S = 1.0  # some templates loop forever for some rngs below difficulty 1.0


class _Timeout(Exception):
    pass


def _call_with_timeout(fn: Callable, *args, seconds: float | None = None):
    """fn(*args), or _Timeout after `seconds` (a SIGALRM timer; only in the main thread, where it can be
    set, otherwise fn runs unguarded). Needed because a few generators retry in an unbounded loop
    when difficulty < 1 shrinks their number ranges."""
    if threading.current_thread() is not threading.main_thread():
        return fn(*args)

    def expire(*_):
        raise _Timeout

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds or GENERATOR_TIMEOUT_S)
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _generate_round_robin(generators: dict, templates: list[int], n: int, seed: int, split: str,
                          difficulty: float, counts: dict, max_tries: int = 50, key_prefix: str = "",
                          seen: set[str] | None = None) -> list[Example]:
    """n unique examples, one per template in turn; example k of template t uses rng key
    (seed, key_prefix, t, k) and is skipped when its question is already in `seen` (updated).

    A generator that raises (some do for some rngs), hangs or repeats a question is counted and retried
    with the next k; a template that fails max_tries times in a row is retired.
    """
    next_k = {t: 0 for t in templates}
    alive = list(templates)
    seen = set() if seen is None else seen
    out: list[Example] = []
    while len(out) < n:
        if not alive:
            raise DataError(f"gsm_symbolic: the {split} templates {templates} gave only {len(out)} unique "
                            f"examples of the {n} asked; lower n_{split} or raise eval_fraction")
        for t in list(alive):
            if len(out) >= n:
                break
            for _ in range(max_tries):
                k = next_k[t]
                next_k[t] += 1
                try:
                    # A str seed is hashed with sha512: the same key gives the same example everywhere.
                    rng = random.Random(f"gsm_symbolic/{seed}/{key_prefix}{t}/{k}")
                    ex = _symbolic_example(_call_with_timeout(generators[t], rng, difficulty), t, k, split, key_prefix)
                except Exception:  # noqa: BLE001 - third-party generators raise anything (or hang: _Timeout)
                    counts["generator_failures"] += 1
                    continue
                if ex.question in seen:
                    counts["duplicates_skipped"] += 1
                    continue
                seen.add(ex.question)
                out.append(ex)
                break
            else:
                alive.remove(t)
    return out


@register_source("gsm_symbolic")
def gsm_symbolic(seed: int = 0, n_train: int = 256, n_eval: int = 64, eval_fraction: float = 0.2,
                 difficulty: float = 1.0, templates: list[int] | None = None, split_by: str = "template",
                 on_error: str = "raise") -> SourceSplit:
    """reasoning-gym's GSM-Symbolic templates.

    templates: the template ids to use (reasoning-gym's `tasks_ok` numbering); None = all of tasks_ok.
    difficulty: passed to the generators, which scale their number ranges by it (1.0 = reasoning-gym's
        only validated value; 0.5 gives smaller numbers, and a few templates then fail or hang for some
        rngs: those examples are retried and counted in `generator_failures`).
    split_by="template": the held-out templates are the first round(eval_fraction * #templates) of a
        shuffle seeded by `seed`, so evaluation measures transfer to unseen templates.
    split_by="instance": every template serves both splits; held-out questions are other instances
        (other names and numbers) of the training templates, never the same question text, so
        evaluation measures learning the procedures, not transfer to new ones.
    (on_error is accepted for a uniform interface; generator failures are always counted and skipped.)
    """
    from reasoning_gym.arithmetic.gsm_symbolic.gsm_symbolic import (
        GSMSymbolicDataset,
        GSMSymbolicDatasetConfig,
        tasks_ok,
    )

    check_on_error(on_error)
    if split_by not in SPLIT_BY:
        raise ValueError(f"data.source.split_by={split_by!r}; expected one of {', '.join(SPLIT_BY)}")
    if not 0 < float(difficulty) <= 1:
        raise ValueError(f"data.source.difficulty={difficulty!r}; expected a number in (0, 1]")
    pool = sorted(tasks_ok)
    if templates is not None:
        unknown = sorted(set(templates) - set(pool))
        if unknown or not templates:
            raise ValueError(f"data.source.templates: {unknown or 'empty list'} not among reasoning-gym's usable "
                             f"GSM-Symbolic templates {pool}")
        pool = sorted(set(templates))
    generators = GSMSymbolicDataset(GSMSymbolicDatasetConfig(seed=seed, size=1)).generators
    counts = {"generator_failures": 0, "duplicates_skipped": 0}
    info = {"seed": seed, "difficulty": difficulty, "split_by": split_by}
    if split_by == "template":
        if not 0 < eval_fraction < 1:
            raise ValueError(f"data.source.eval_fraction={eval_fraction}; expected 0 < eval_fraction < 1")
        if len(pool) < 2:
            raise ValueError("data.source.split_by=template needs at least 2 templates")
        order = list(pool)
        random.Random(seed).shuffle(order)
        n_held = min(max(1, round(eval_fraction * len(order))), len(order) - 1)
        eval_t, train_t = sorted(order[:n_held]), sorted(order[n_held:])
        train = _generate_round_robin(generators, train_t, n_train, seed, "train", difficulty, counts)
        held = _generate_round_robin(generators, eval_t, n_eval, seed, "eval", difficulty, counts)
        info.update(eval_fraction=eval_fraction)
    else:
        train_t = eval_t = pool
        seen: set[str] = set()  # held-out questions first, so no training question repeats one
        held = _generate_round_robin(generators, pool, n_eval, seed, "eval", difficulty, counts,
                                     key_prefix="eval/", seen=seen)
        train = _generate_round_robin(generators, pool, n_train, seed, "train", difficulty, counts,
                                      key_prefix="train/", seen=seen)
    return SourceSplit(train, held, {**info, "train_templates": train_t, "eval_templates": eval_t, **counts})
