"""Assessment accuracy: the share of (correct, incorrect) CoT pairs the model's likelihood orders correctly."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from lnrl.evaluation.assessment import assessment_accuracy, ordered_share, score_texts
from lnrl.data.records import Completion, GroupRecord
from lnrl.data.tokenize import encode_completion, encode_prompt
from lnrl.models import load_model, load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer({"source": "tiny"})


class UnigramLM(torch.nn.Module):
    """A stub LM whose next-token distribution ignores the context: log p(x) = log_softmax(bias)[x].

    A completion's mean log-likelihood is then the mean of log_softmax(bias) over its tokens, which
    the tests compute without the scorer.
    """

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.bias = torch.nn.Parameter(bias)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.bias.expand(*input_ids.shape, -1))


def mean_logp(tok, bias: torch.Tensor, text: str) -> float:
    ids = encode_completion(tok, text)  # completion tokens incl. the closing <|im_end|>
    return torch.log_softmax(bias, -1)[ids].mean().item()


def group(gid, comps, gold="3 + 3 = 6\n#### 6") -> GroupRecord:
    return GroupRecord(id=gid, question=f"What is 3 + 3? ({gid})", answer="6", gold_solution=gold,
                       completions=[Completion(text=t, pred=None, correct=c) for t, c in comps])


def test_ordered_share_by_hand():
    # pos -1 beats -2 twice and ties -1 (1/2); pos -3 beats nothing: 2.5 of 6 pairs
    assert ordered_share([-1.0, -3.0], [-2.0, -2.0, -1.0]) == (2.5, 6)
    assert ordered_share([], [-1.0]) == (0.0, 0)


def test_stub_model_scores_equal_hand_computed_means(tok):
    bias = torch.randn(len(tok), generator=torch.Generator().manual_seed(0))
    texts = ["yes yes yes", "no", "3 + 3 = 6\n#### 6"]
    got = score_texts(UnigramLM(bias), tok, [("Q?", t) for t in texts], batch_size=2)
    assert got == pytest.approx([mean_logp(tok, bias, t) for t in texts], abs=1e-5)
    # "sum" normalization: the mean times the completion length
    got_sum = score_texts(UnigramLM(bias), tok, [("Q?", t) for t in texts], normalize="sum")
    assert got_sum == pytest.approx([mean_logp(tok, bias, t) * len(encode_completion(tok, t)) for t in texts],
                                    rel=1e-5)


def test_assessment_accuracy_with_controlled_ordering(tok):
    """Token "good" is likely, "bad" unlikely: mean log p = (8 n_good - 8 n_bad) / (n + 1) - logZ
    (the +1 is <|im_end|>), so e.g. "good good" 16/3 > "good bad" 0 > "bad bad" -16/3.

    q1: correct ["good good", "bad bad"] vs incorrect ["good bad"]    -> 1 of 2 pairs
    q2: correct ["good"] vs incorrect ["bad", "bad bad bad", "good"]  -> 2 + 1/2 (tie) of 3
    q3: only incorrect -> no pairs without the gold CoT
    total: (1 + 2.5) / 5 = 0.7
    """
    bias = torch.zeros(len(tok))
    for word, value in (("good", 8.0), (" good", 8.0), ("bad", -8.0), (" bad", -8.0)):
        (token,) = tok(word, add_special_tokens=False).input_ids  # "good" and " good" are distinct tokens
        bias[token] = value
    model = UnigramLM(bias)
    cands = [group("q1", [("good good", True), ("bad bad", True), ("good bad", False)]),
             group("q2", [("good", True), ("bad", False), ("bad bad bad", False), ("good", False)]),
             group("q3", [("bad", False)])]
    m, records = assessment_accuracy(model, tok, cands, batch_size=3, progress=False)  # the paper's: generated only
    assert m["val/assessment_acc"] == pytest.approx(3.5 / 5)
    assert m["val/assessment_pairs"] == 5 and m["val/assessment_questions"] == 2
    assert m["val/assessment_candidates"] == 3 and "val/assessment_acc_gold" not in m
    assert records == [{"id": "q1", "pairs": 2, "right": 1.0}, {"id": "q2", "pairs": 3, "right": 2.5}]

    # The gold-inclusive variant (a different metric, under its own name): the gold CoT "good job" (3 tokens
    # with <|im_end|>) joins each question's positives: mean (8 + 0 + 0) / 3 = 8/3 beats every negative but
    # "good" (4): q1 1/1, q2 2/3, q3 1/1 -> 4 more right of 5 more pairs.
    for g in cands:
        object.__setattr__(g, "gold_solution", "good job")
    assert mean_logp(tok, bias, "good job") == pytest.approx(8 / 3 - torch.logsumexp(bias, 0).item(), abs=1e-4)
    m, records = assessment_accuracy(model, tok, cands, include_gold=True, progress=False)
    assert m["val/assessment_pairs_gold"] == 5 + 5 and m["val/assessment_acc_gold"] == pytest.approx((3.5 + 4) / 10)
    assert m["val/assessment_acc"] == pytest.approx(3.5 / 5) and m["val/assessment_questions"] == 2


def test_truncated_candidate_is_scored_without_eos(tok):
    """A candidate cut at the token limit never produced <|im_end|>, so it is scored without it:
    s("good good") = (8 + 8) / 2 - logZ = 8 - logZ. The correct "good good good" ends normally:
    (8 + 8 + 8 + 0) / 4 - logZ = 6 - logZ. The truncated wrong one wins: the pair is misordered (0).
    Scored with an eos it would get (8 + 8 + 0) / 3 - logZ = 16/3 - logZ < 6 - logZ (ordered right)."""
    bias = torch.zeros(len(tok))
    for word in ("good", " good"):
        (token,) = tok(word, add_special_tokens=False).input_ids
        bias[token] = 8.0
    model = UnigramLM(bias)
    g = GroupRecord(id="q", question="Q?", answer="6", gold_solution="6",
                    completions=[Completion(text="good good good", pred=None, correct=True),
                                 Completion(text="good good", pred=None, correct=False, truncated=True)])
    m, _ = assessment_accuracy(model, tok, [g], progress=False)
    assert m["val/assessment_acc"] == 0.0  # with an eos the wrong one would score 16/3 < 24/4 and be ordered right


def test_no_pairs_gives_nan(tok):
    m, _ = assessment_accuracy(UnigramLM(torch.zeros(len(tok))), tok, [group("q", [("a", True)])],
                               progress=False)
    assert math.isnan(m["val/assessment_acc"]) and m["val/assessment_pairs"] == 0


def test_tiny_model_batched_scores_equal_one_row_forward(tok):
    """Padding and batching do not change a score: compare with an unpadded forward per row."""
    model = load_model({"source": "tiny"}, tok)
    items = [("What is 2 + 2?", "2 + 2 = 4\n#### 4"), ("A much longer question about apples and pears?", "#### 7"),
             ("Q?", "some text that is a bit longer than the others, with numbers 1, 2, 3")]
    got = score_texts(model, tok, items, batch_size=3)
    for (q, c), s in zip(items, got):
        prompt, comp = encode_prompt(tok, q), encode_completion(tok, c)
        ids = torch.tensor([prompt + comp])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        token_logps = logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]][len(prompt) - 1:]
        assert len(token_logps) == len(comp)
        assert s == pytest.approx(token_logps.mean().item(), abs=1e-5)


def test_prompt_longer_than_max_length_is_left_out(tok):
    model = UnigramLM(torch.zeros(len(tok)))
    long_q = "apples " * 200
    assert score_texts(model, tok, [(long_q, "x"), ("Q?", "x")], max_length=64)[0] is None
    m, _ = assessment_accuracy(model, tok, [group("q", [("a", True), ("b", False)])], max_length=64,
                               progress=False)
    assert m["val/assessment_pairs"] == 1
