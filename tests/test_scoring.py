"""lnrl.scoring: shift, masking, fp32 scoring of bf16 logits, memory-aware autograd, normalize."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lnrl.scoring import SeqScores, normalize, sequence_logps, token_logps


def naive_sequence_logps(logits, input_ids, completion_mask):
    """Independent reference: full log_softmax, shift, gather, mask."""
    logp = F.log_softmax(logits[:, :-1].double(), dim=-1)
    tok = logp.gather(-1, input_ids[:, 1:, None].clamp(min=0)).squeeze(-1)
    m = completion_mask[:, 1:].double()
    return (tok * m).sum(-1), m.sum(-1)


# Hand-built V=3 distributions: logits = log(probs) make log_softmax(logits) = log(probs) exactly.
PROBS = torch.tensor([[0.50, 0.25, 0.25],   # position 0 predicts token 1
                      [0.10, 0.20, 0.70],   # position 1 predicts token 2
                      [1 / 3, 1 / 3, 1 / 3]])  # position 2 predicts nothing in the sequence


def test_shift_on_hand_built_logits():
    """input_ids = [0, 2, 1]. Token 1 (id 2) is scored by position 0: log 0.25; token 2 (id 1) by
    position 1: log 0.2. Without the shift they would read log 0.7 and log 1/3."""
    logits = PROBS.log()[None]
    ids = torch.tensor([[0, 2, 1]])
    both = sequence_logps(logits, ids, torch.tensor([[0, 1, 1]]))
    assert both.logp_sum.item() == pytest.approx(math.log(0.25 * 0.2), abs=1e-6)
    assert both.n_tokens.item() == 2
    last = sequence_logps(logits, ids, torch.tensor([[0, 0, 1]]))
    assert last.logp_sum.item() == pytest.approx(math.log(0.2), abs=1e-6)
    assert last.n_tokens.item() == 1
    # The first token has no logits before it: a mask that includes it still scores 2 tokens.
    first = sequence_logps(logits, ids, torch.tensor([[1, 1, 1]]))
    assert first.logp_sum.item() == pytest.approx(math.log(0.05), abs=1e-6) and first.n_tokens.item() == 2
    # log_softmax is shift-invariant per position: adding a constant to a position's logits changes nothing.
    shifted = sequence_logps(logits + torch.tensor([3.0, -7.0, 11.0])[None, :, None], ids, torch.tensor([[0, 1, 1]]))
    assert shifted.logp_sum.item() == pytest.approx(math.log(0.05), abs=1e-5)


def test_masked_positions_are_ignored_and_get_no_gradient():
    """Right padding with any ids (-100 included) and any logits under the pad: same scores, zero grad."""
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11, requires_grad=True)
    ids = torch.tensor([[3, 4, 5, 6, -100, -100], [1, 2, 3, 4, 5, 6]])
    mask = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]])
    scores = sequence_logps(logits, ids, mask)
    ref_sum, ref_n = naive_sequence_logps(logits.detach(), ids, mask)
    torch.testing.assert_close(scores.logp_sum.double(), ref_sum, atol=1e-5, rtol=0)
    assert scores.n_tokens.tolist() == [3, 4]
    scores.logp_sum.sum().backward()
    # Row 0 scores tokens 1..3, read from positions 0..2; positions 3..5 must get no gradient.
    assert logits.grad[0, 3:].abs().max() == 0 and logits.grad[0, :3].abs().max() > 0
    # Row 1 scores tokens 2..5 from positions 1..4; position 0 and the last position get none.
    assert logits.grad[1, 0].abs().max() == 0 and logits.grad[1, 5].abs().max() == 0


@pytest.mark.parametrize("chunk_tokens", [1, 4, 1024])
def test_matches_naive_log_softmax_values_and_gradients(chunk_tokens):
    """Any block size gives the naive full-log_softmax result, forward and backward."""
    torch.manual_seed(1)
    B, T, V = 3, 7, 23
    logits = (3 * torch.randn(B, T, V)).requires_grad_()
    ids = torch.randint(0, V, (B, T))
    mask = (torch.rand(B, T) > 0.3).long()
    coef = torch.randn(B)  # a generic downstream loss

    scores = sequence_logps(logits, ids, mask, chunk_tokens=chunk_tokens)
    (coef * scores.logp_sum).sum().backward()
    ours = logits.grad.clone()

    logits.grad = None
    ref_sum, ref_n = naive_sequence_logps(logits, ids, mask)
    (coef.double() * ref_sum).sum().backward()
    torch.testing.assert_close(scores.logp_sum.double(), ref_sum.detach(), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(scores.n_tokens, ref_n.long())
    torch.testing.assert_close(ours, logits.grad, atol=1e-6, rtol=1e-5)


def test_gradcheck_float64():
    """Finite differences agree with the custom backward (float64 logits are scored in float64)."""
    torch.manual_seed(2)
    logits = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 5, (2, 4))
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0]])
    assert torch.autograd.gradcheck(lambda x: sequence_logps(x, ids, mask, chunk_tokens=3).logp_sum, (logits,))


def test_bf16_logits_are_scored_in_fp32():
    """The result equals fp32 scoring of the same bf16 values (to 1e-5) and is float32; computing the
    log-softmax in bf16 instead would be off by more than 1e-2 here."""
    torch.manual_seed(3)
    B, T, V = 2, 9, 64
    logits16 = (4 * torch.randn(B, T, V)).bfloat16()
    ids = torch.randint(0, V, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    scores = sequence_logps(logits16, ids, mask)
    assert scores.logp_sum.dtype == torch.float32
    ref_sum, _ = naive_sequence_logps(logits16.float(), ids, mask)
    torch.testing.assert_close(scores.logp_sum.double(), ref_sum, atol=1e-5, rtol=0)
    in_bf16 = F.log_softmax(logits16[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1).sum(-1)
    assert (in_bf16.double() - ref_sum).abs().max() > 1e-2


def test_bf16_backward_saves_no_fp32_copy_of_the_logits():
    """Autograd keeps the bf16 logits and a [B, T-1] float32 logsumexp, never a [B, T-1, V] float32 tensor."""
    torch.manual_seed(4)
    B, T, V = 4, 16, 256
    logits = torch.randn(B, T, V, dtype=torch.bfloat16, requires_grad=True)
    ids = torch.randint(0, V, (B, T))
    saved = []

    def pack(t):
        saved.append((t.dtype, t.numel()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        scores = sequence_logps(logits * 1, ids, torch.ones(B, T), chunk_tokens=8)
    assert max(n for dtype, n in saved if dtype == torch.float32) <= B * T
    scores.logp_sum.sum().backward()
    assert logits.grad.dtype == torch.bfloat16
    ref = logits.detach().float().requires_grad_()
    naive_sequence_logps(ref, ids, torch.ones(B, T))[0].sum().backward()
    torch.testing.assert_close(logits.grad.float(), ref.grad, atol=1e-2, rtol=1e-2)


def test_token_logps_and_shape_errors():
    logits = PROBS.log()[None]
    logps, mask = token_logps(logits, torch.tensor([[0, 2, 1]]), torch.tensor([[0, 0, 1]]))
    assert mask.tolist() == [[False, True]]
    torch.testing.assert_close(logps, torch.tensor([[0.0, math.log(0.2)]]))
    with pytest.raises(ValueError, match=r"logits \(1, 3, 3\).*input_ids \(1, 4\)"):
        sequence_logps(logits, torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4))
    one = sequence_logps(torch.zeros(2, 1, 5), torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1))
    assert one.logp_sum.tolist() == [0.0, 0.0] and one.n_tokens.tolist() == [0, 0]


def test_normalize_sum_and_mean():
    """mean = logp_sum / max(n_tokens, 1): -6/3 = -2, -5/1 = -5, and 0 tokens gives 0/1 = 0."""
    s = SeqScores(torch.tensor([-6.0, -5.0, 0.0]), torch.tensor([3, 1, 0]))
    assert normalize(s, "sum").tolist() == [-6.0, -5.0, 0.0]
    assert normalize(s, "mean").tolist() == [-2.0, -5.0, 0.0]
    assert s.normalized("mean").tolist() == [-2.0, -5.0, 0.0]
    with pytest.raises(ValueError, match="normalize='avg'"):
        normalize(s, "avg")


def test_seqscores_helpers():
    s = SeqScores(torch.tensor([-1.0, -2.0, -3.0, -4.0]), torch.tensor([1, 2, 3, 4]))
    chosen, rejected = s.chunk(2)
    assert chosen.logp_sum.tolist() == [-1.0, -2.0] and rejected.n_tokens.tolist() == [3, 4]
    assert SeqScores.cat([rejected, chosen]).logp_sum.tolist() == [-3.0, -4.0, -1.0, -2.0]
    assert len(s[1:3]) == 2 and s[1:3].n_tokens.tolist() == [2, 3]
    assert s[-1].logp_sum.tolist() == [-4.0] and s[0].n_tokens.tolist() == [1]
    assert s[torch.tensor([True, False, False, True])].logp_sum.tolist() == [-1.0, -4.0]
    x = torch.tensor([-1.0], requires_grad=True)
    assert not SeqScores(x * 2, torch.tensor([1])).detach().logp_sum.requires_grad
    moved = s.to("meta")
    assert moved.logp_sum.is_meta and moved.n_tokens.dtype == torch.long
    with pytest.raises(ValueError, match="same|both"):
        SeqScores(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="equal parts"):
        SeqScores(torch.zeros(3), torch.zeros(3)).chunk(2)


def test_score_rows_matches_direct_forward_and_restores_train_mode():
    """score_rows == sequence_logps(model(row).logits) of each row alone (no padding at all), in input
    order, with None for dropped rows, whatever the batching; the model's mode is put back."""
    from lnrl.data.tokenize import encode
    from lnrl.models import load_model, load_tokenizer
    from lnrl.scoring import score_rows

    tok = load_tokenizer({"source": "tiny"})
    model = load_model({"source": "tiny"}, tok)
    rows = [encode(tok, "What is 2 + 3?", "2 + 3 = 5.\n#### 5", 256),
            None,
            encode(tok, "Tom has 12 apples and eats 4. How many are left?",
                   "He eats 4 of 12, so 12 - 4 = 8 are left.\n#### 8", 256),
            encode(tok, "Hi", "#### 1", 256, system_prompt="Be brief."),
            encode(tok, "A train covers 60 km in 1.5 hours. What is its speed in km/h?",
                   "Speed is distance over time: 60 / 1.5 = 40.\n#### 40", 256),
            None]
    assert len({len(r["input_ids"]) for r in rows if r}) == 4  # different lengths: batches carry padding
    expected = []
    with torch.no_grad():
        for r in rows:
            if r is None:
                expected.append(None)
                continue
            ids, mask = torch.tensor([r["input_ids"]]), torch.tensor([r["completion_mask"]])
            s = sequence_logps(model(input_ids=ids).logits, ids, mask)
            expected.append((s.logp_sum.item(), int(s.n_tokens.item())))
    model.train()
    for batch_size in (1, 3, 8):
        got = score_rows(model, rows, pad_id=tok.pad_token_id, batch_size=batch_size)
        assert model.training
        assert [g is None for g in got] == [e is None for e in expected]
        for g, e in zip(got, expected):
            if e is not None:
                assert g[1] == e[1] and g[0] == pytest.approx(e[0], rel=1e-6, abs=1e-5)
                assert isinstance(g[0], float) and isinstance(g[1], int)
    model.eval()
    score_rows(model, rows, pad_id=tok.pad_token_id)
    assert not model.training
    assert score_rows(model, [None, None], pad_id=tok.pad_token_id) == [None, None]
