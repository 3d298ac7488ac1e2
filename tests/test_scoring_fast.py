"""lnrl.scoring.score_batch (the fast path) against the plain path `sequence_logps(model(...).logits, ...)`.

Every case compares the loss AND every parameter gradient, in float32, on batches built by the real
collators from rows encoded with the embedded tokenizer and the chat template: different prompt and
completion lengths, pairs (rows i and B+i share a prompt), groups (k members and the gold row share one).
"""

from __future__ import annotations

import os

import pytest
import torch

from lnrl.data.collate import GroupCollator, PairCollator, SFTCollator, pad_rows
from lnrl.data.tokenize import encode
from lnrl.losses import build_loss
from lnrl.models import load_model, load_tokenizer
from lnrl.scoring import SeqScores, buckets, head_logps, score_batch, score_rows, sequence_logps

QUESTIONS = [
    "What is 2 + 3?",
    "Tom has 12 apples and eats 4 of them. How many apples are left?",
    "A train covers 60 km in 1.5 hours. What is its average speed in km/h?",
]
ANSWERS = [
    "2 + 3 = 5.\n#### 5",
    "He eats 4 of the 12 apples, so 12 - 4 = 8 apples are left.\n#### 8",
    "Average speed is distance over time: 60 / 1.5 = 40 km/h.\n#### 40",
    "#### 7",
    "Let us add: first 10, then 20 more, then 5, which gives 10 + 20 + 5 = 35 in total.\n#### 35",
]
LEVERS = [{"share_prompt": s, "trim": t} for s in (True, False) for t in (True, False)]
LEVER_IDS = [f"share={s}-trim={t}" for s in (True, False) for t in (True, False)]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer({"source": "tiny"})


@pytest.fixture(scope="module")
def model(tok):
    m = load_model({"source": "tiny"}, tok)
    m.train()
    return m


def row(tok, q: int, a: int, system_prompt: str | None = None) -> dict:
    return encode(tok, QUESTIONS[q], ANSWERS[a], 512, system_prompt=system_prompt)


def pair_batch(tok) -> dict:
    """3 pairs, prompts of 3 lengths (one with a custom system prompt), completions of 5 lengths."""
    spec = [(0, 0, 3, None), (1, 1, 4, "Solve it."), (2, 2, 1, None)]
    items = [{"chosen": row(tok, q, c, sp), "rejected": row(tok, q, r, sp),
              "ref_chosen": (-40.0 - i, 20), "ref_rejected": (-55.0 + 2 * i, 25)}
             for i, (q, c, r, sp) in enumerate(spec)]
    return PairCollator(tok.pad_token_id)(items)


def group_batch(tok) -> dict:
    """Group 0: 3 members of question 1; group 1: 2 members of question 2; each with its gold row."""
    items = [{"members": [row(tok, 1, a) for a in (0, 1, 4)], "is_positive": [False, True, False],
              "gold": row(tok, 1, 1)},
             {"members": [row(tok, 2, a) for a in (3, 2)], "is_positive": [False, True], "gold": row(tok, 2, 2)}]
    return GroupCollator(tok.pad_token_id)(items)


def plain_scores(model, batch: dict, prefixes=("",)) -> SeqScores:
    return SeqScores.cat([sequence_logps(model(input_ids=batch[f"{p}input_ids"],
                                               attention_mask=batch[f"{p}attention_mask"]).logits,
                                         batch[f"{p}input_ids"], batch[f"{p}completion_mask"]) for p in prefixes])


def loss_and_grads(model, loss_of_scores, scores_fn):
    model.zero_grad(set_to_none=True)
    scores = scores_fn()
    loss = loss_of_scores(scores)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return scores, loss.detach(), grads


def assert_same(model, loss_of_scores, plain_fn, fast_fn):
    s0, l0, g0 = loss_and_grads(model, loss_of_scores, plain_fn)
    s1, l1, g1 = loss_and_grads(model, loss_of_scores, fast_fn)
    torch.testing.assert_close(s1.logp_sum, s0.logp_sum, atol=1e-5, rtol=1e-5)
    assert s1.n_tokens.tolist() == s0.n_tokens.tolist()
    assert s1.logp_sum.dtype == torch.float32
    torch.testing.assert_close(l1, l0, atol=1e-5, rtol=1e-5)
    assert g1.keys() == g0.keys() and len(g0) == len([p for p in model.parameters() if p.requires_grad])
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")
    return l0, g0


PAIR_LOSSES = {
    "dpo-sum": build_loss("dpo", beta=0.1, normalize="sum"),
    "dpo-mean": build_loss("dpo", beta=0.5, normalize="mean"),
    "ipo": build_loss("ipo"),
    "simpo": build_loss("simpo"),
}


@pytest.mark.parametrize("levers", LEVERS, ids=LEVER_IDS)
@pytest.mark.parametrize("name", list(PAIR_LOSSES))
def test_pair_losses_and_gradients_match_plain_path(tok, model, name, levers):
    batch = pair_batch(tok)
    loss_fn = PAIR_LOSSES[name]

    def loss(scores):
        chosen, rejected = scores.chunk(2)
        ref_c, ref_r = SeqScores(batch["ref_logp_sum"], batch["ref_n_tokens"]).chunk(2)
        return loss_fn(policy_chosen=chosen, policy_rejected=rejected, ref_chosen=ref_c, ref_rejected=ref_r,
                       weights=torch.tensor([1.0, 0.5, 1.5])).loss

    _, grads = assert_same(model, loss, lambda: plain_scores(model, batch),
                           lambda: score_batch(model, batch, **levers))
    # The comparison has teeth: the loss moves the tied embedding / head weight and the first layer.
    assert grads["model.embed_tokens.weight"].abs().max() > 1e-4
    assert grads["model.layers.0.self_attn.q_proj.weight"].abs().max() > 1e-6


@pytest.mark.parametrize("levers", LEVERS, ids=LEVER_IDS)
@pytest.mark.parametrize("constraint", ["none", "detached", "boundary"])
def test_aft_with_gold_nll_matches_plain_path(tok, model, constraint, levers):
    """AFT's objective: the group loss on the members + NLL on the gold rows, scored in one call."""
    batch = group_batch(tok)
    aft, nll = build_loss("aft", constraint=constraint, boundary=0.5), build_loss("nll")
    n = batch["input_ids"].shape[0]

    def loss(scores):
        return (aft(scores=scores[:n], group_ids=batch["group_ids"], is_positive=batch["is_positive"]).loss
                + nll(scores=scores[n:]).loss)

    assert_same(model, loss, lambda: plain_scores(model, batch, ("", "gold_")),
                lambda: score_batch(model, batch, prefixes=("", "gold_"), **levers))


@pytest.mark.parametrize("levers", LEVERS, ids=LEVER_IDS)
def test_nll_on_sft_rows_without_shared_prompts(tok, model, levers):
    """SFT rows of three different questions: nothing to share, every row runs whole."""
    batch = SFTCollator(tok.pad_token_id)([row(tok, 0, 0), row(tok, 1, 4), row(tok, 2, 2, "Be brief.")])
    nll = build_loss("nll")
    assert_same(model, lambda s: nll(scores=s).loss, lambda: plain_scores(model, batch),
                lambda: score_batch(model, batch, **levers))


def test_rows_without_completion_tokens(tok, model):
    """A row with zero completion tokens scores (0, 0) and moves nothing; one that shares a prompt with
    others does not disturb them; a batch of only such rows still backpropagates (zero gradients)."""
    r = row(tok, 1, 1)
    empty = {"input_ids": r["input_ids"], "completion_mask": [0] * len(r["input_ids"])}
    first_only = {"input_ids": r["input_ids"][:3], "completion_mask": [1, 0, 0]}  # token 0 is never scored
    batch = SFTCollator(tok.pad_token_id)([r, empty, row(tok, 1, 4), first_only])
    nll = build_loss("nll")
    _, grads = assert_same(model, lambda s: nll(scores=s).loss, lambda: plain_scores(model, batch),
                           lambda: score_batch(model, batch))
    s = score_batch(model, batch)
    assert s.logp_sum[1].item() == 0.0 and s.n_tokens[1].item() == 0 and s.n_tokens[3].item() == 0

    only = SFTCollator(tok.pad_token_id)([empty, first_only])
    s = score_batch(model, only)
    assert s.logp_sum.tolist() == [0.0, 0.0] and s.n_tokens.tolist() == [0, 0] and s.logp_sum.requires_grad
    model.zero_grad(set_to_none=True)
    nll(scores=s).loss.backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.parameters())


def test_left_padded_rows_score_as_unpadded(tok, model):
    """Rows are their attention_mask-1 tokens: a left-padded batch gives the right-padded batch's scores
    and gradients (the plain path itself is not trusted with left padding: its positions shift)."""
    items = [row(tok, 0, 0), row(tok, 1, 4), row(tok, 1, 3)]
    right = SFTCollator(tok.pad_token_id)(items)
    T = right["input_ids"].shape[1]
    left = {k: torch.stack([torch.cat([v[i, int(right["attention_mask"][i].sum()):],
                                       v[i, :int(right["attention_mask"][i].sum())]]) for i in range(len(items))])
            for k, v in right.items() if k != "labels"}
    assert left["attention_mask"][0, 0] == 0 and left["attention_mask"][0, T - 1] == 1
    nll = build_loss("nll")
    assert_same(model, lambda s: nll(scores=s).loss, lambda: plain_scores(model, right),
                lambda: score_batch(model, left))


def test_prompt_sharing_and_trimming_do_less_work(tok, model, monkeypatch):
    """The decoder sees each shared prompt once and no all-padding columns."""
    import lnrl.scoring as scoring

    batch = group_batch(tok)
    assert scoring._capabilities(model).share  # probed before counting: the probe runs the decoder too
    seen = []
    decoder = model.get_decoder()
    real_forward = decoder.forward

    def counting(*args, **kw):
        seen.append(kw["input_ids"].numel())
        return real_forward(*args, **kw)

    monkeypatch.setattr(decoder, "forward", counting)
    score_batch(model, batch, prefixes=("", "gold_"), call_cost_tokens=0)
    total = sum(seen)
    real = int(batch["attention_mask"].sum() + batch["gold_attention_mask"].sum())
    prompts = [r["input_ids"][: r["completion_mask"].index(1)] for r in (row(tok, 1, 1), row(tok, 2, 2))]
    system = os.path.commonprefix(prompts)   # the chat template's system turn and user header
    assert len(system) > 10
    # 7 rows over 2 prompts: 5 prompt copies are skipped, and the 2 prompts' common prefix runs once;
    # call_cost 0 leaves no padding at all.
    assert total == real - 3 * len(prompts[0]) - 2 * len(prompts[1]) - len(system)


def test_rows_of_different_questions_run_their_common_prefix_once(tok, model, monkeypatch):
    """SFT rows (no prompt shared whole) still share the system turn: it runs once, not once per row;
    a call cost above what that saves turns it off."""
    import lnrl.scoring as scoring

    rows = [row(tok, q, a) for q, a in ((0, 0), (1, 1), (2, 2))]
    batch = SFTCollator(tok.pad_token_id)(rows)
    assert scoring._capabilities(model).share
    seen = []
    decoder = model.get_decoder()
    real_forward = decoder.forward
    monkeypatch.setattr(decoder, "forward", lambda *a, **kw: (seen.append(tuple(kw["input_ids"].shape)),
                                                             real_forward(*a, **kw))[1])
    system = os.path.commonprefix([r["input_ids"] for r in rows])
    real = int(batch["attention_mask"].sum())
    score_batch(model, batch, call_cost_tokens=0)
    assert (1, len(system)) in seen
    assert sum(a * b for a, b in seen) == real - 2 * len(system)
    seen.clear()
    score_batch(model, batch, call_cost_tokens=2 * len(system))   # saving 2 x prefix does not beat one call
    assert (1, len(system)) not in seen and sum(a * b for a, b in seen) >= real


def test_models_the_split_cannot_reproduce_fall_back(tok):
    """A head whose logits the model rescales (as Gemma's soft-capping or Cohere's logit_scale do) is
    caught by the probe; score_batch then equals the plain path."""
    from transformers import LlamaForCausalLM

    import lnrl.scoring as scoring

    class Scaled(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 2.0
            return out

    base = load_model({"source": "tiny"}, tok)
    scaled = Scaled(base.config)
    scaled.load_state_dict(base.state_dict())
    batch = pair_batch(tok)
    got = score_batch(scaled, batch)
    assert not scoring._CAPS[scaled].split
    torch.testing.assert_close(got.logp_sum, plain_scores(scaled, batch).logp_sum)

    class Opaque(torch.nn.Module):  # no get_decoder: plain path, no probe forward
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            return self.inner(**kw)

    torch.testing.assert_close(score_batch(Opaque(base), batch).logp_sum, plain_scores(base, batch).logp_sum)


def test_batch_errors(tok, model):
    batch = pair_batch(tok)
    with pytest.raises(KeyError, match="gold_input_ids"):
        score_batch(model, batch, prefixes=("", "gold_"))
    bad = dict(batch, completion_mask=batch["completion_mask"].clone())
    bad["completion_mask"][0, -1] = 1
    bad["attention_mask"] = batch["attention_mask"].clone()
    bad["attention_mask"][0, -1] = 0
    with pytest.raises(ValueError, match="completion_mask is 1 on a padding position"):
        score_batch(model, bad)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_head_logps_gradcheck(bias, chunk):
    """The chunked head log-prob against finite differences (float64), bias and chunking included."""
    torch.manual_seed(0)
    h = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True) if bias else None
    t = torch.tensor([0, 6, 3, 3, 1])
    inputs = (h, w, b) if bias else (h, w)
    fn = (lambda h, w, b: head_logps(h, w, b, t, chunk)) if bias else (lambda h, w: head_logps(h, w, None, t, chunk))
    assert torch.autograd.gradcheck(fn, inputs)
    ref = torch.log_softmax(h @ w.T + (b if bias else 0), -1).gather(-1, t[:, None]).squeeze(-1)
    torch.testing.assert_close(fn(*inputs), ref)


def test_buckets_cut_where_padding_costs_more_than_a_call():
    """Lengths 10, 11, 100, 101 with a call costing 5 slots: {10, 11} and {100, 101} (cost 22 + 202 + 10)
    beat one batch (404 + 5) and four calls (222 + 20). A huge call cost keeps one batch."""
    assert sorted(map(sorted, buckets([100, 10, 101, 11], 5))) == [[0, 2], [1, 3]]
    assert buckets([100, 10, 101, 11], 10**9) == [[1, 3, 0, 2]]
    assert buckets([3, 3, 3], 0) == [[0, 1, 2]]  # a tie keeps the fewer calls


def test_bf16_model_uses_the_fast_path(tok):
    """A bf16 model is split too (its logits are computed in bf16 and scored in float32, as the plain path does)."""
    import lnrl.scoring as scoring

    m = load_model({"source": "tiny", "dtype": "bf16"}, tok)
    batch = pair_batch(tok)
    with torch.no_grad():
        fast, plain = score_batch(m, batch), plain_scores(m, batch)
    assert scoring._CAPS[m].split and scoring._CAPS[m].share and fast.logp_sum.dtype == torch.float32
    torch.testing.assert_close(fast.logp_sum, plain.logp_sum, rtol=2e-2, atol=0.5)


@pytest.mark.slow
def test_embedded_model_matches_plain_path(tok):
    """The embedded SmolLM2-135M (30 layers, tied head), float32.

    DPO on 2 pairs: scores, loss and every gradient element equal the plain path's to 1e-5.
    AFT + gold NLL on one group (larger gradients, up to ~40 on the norm weights): scores and loss to
    1e-5; for the gradients, elementwise 1e-5 is below float32 resolution here (the plain path itself
    is ~3e-5 of each tensor's scale away from float64), so the fast path must be as exact as the plain
    path: its distance to the float64 plain gradients at most 1.5x the plain float32 path's (measured:
    3.4e-6 vs 3.5e-6, normwise), and normwise the two agree to 1e-5. (Both paths
    agree to ~1e-16 in float64 once Llama's RMSNorm stops rounding through float32: the residual is
    summation order, not math.)
    """
    m = load_model({"source": "embedded"}, tok)
    m.train()
    items = [{"chosen": row(tok, q, c), "rejected": row(tok, q, r)} for q, c, r in [(0, 0, 3), (1, 1, 4)]]
    batch = PairCollator(tok.pad_token_id)(items)
    dpo = build_loss("dpo", beta=0.1, normalize="mean")

    def dpo_loss(scores):
        c, r = scores.chunk(2)
        ref = SeqScores(torch.full((2,), -30.0), torch.full((2,), 20))
        return dpo(policy_chosen=c, policy_rejected=r, ref_chosen=ref, ref_rejected=ref).loss

    assert_same(m, dpo_loss, lambda: plain_scores(m, batch), lambda: score_batch(m, batch))

    groups = GroupCollator(tok.pad_token_id)([{"members": [row(tok, 2, a) for a in (2, 3, 4)],
                                               "is_positive": [True, False, False], "gold": row(tok, 2, 2)}])
    aft, nll = build_loss("aft", constraint="boundary"), build_loss("nll")

    def aft_loss(s):
        return aft(scores=s[:3], group_ids=groups["group_ids"], is_positive=groups["is_positive"]).loss \
            + nll(scores=s[3:]).loss

    plain = lambda: plain_scores(m, groups, ("", "gold_"))  # noqa: E731
    fast = lambda: score_batch(m, groups, prefixes=("", "gold_"))  # noqa: E731
    s32, l32, g32 = loss_and_grads(m, aft_loss, plain)
    f32, lf32, gf32 = loss_and_grads(m, aft_loss, fast)
    torch.testing.assert_close(f32.logp_sum, s32.logp_sum, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lf32, l32, atol=1e-5, rtol=1e-5)
    m.double()
    _, _, g64 = loss_and_grads(m, aft_loss, plain)
    flat = lambda g: torch.cat([g[n].double().flatten() for n in sorted(g64)])  # noqa: E731
    truth = flat(g64)
    err_plain = (flat(g32) - truth).norm() / truth.norm()
    err_fast = (flat(gf32) - truth).norm() / truth.norm()
    assert err_plain < 1e-5 and err_fast <= 1.5 * err_plain, (err_fast.item(), err_plain.item())
    # and normwise the two float32 gradients agree to 1e-5
    assert (flat(gf32) - flat(g32)).norm() / flat(g32).norm() < 1e-5


def test_score_rows_matches_plain_path_with_shared_prompts(tok, model):
    """score_rows (no_grad, fast path inside) returns the plain path's numbers for rows that share prompts."""
    rows = [row(tok, 1, a) for a in (0, 1, 4)] + [None, row(tok, 2, 2), row(tok, 0, 0)]
    expected = []
    with torch.no_grad():
        for r in rows:
            if r is None:
                expected.append(None)
                continue
            b = pad_rows([r], tok.pad_token_id)
            s = plain_scores(model, b)
            expected.append((s.logp_sum.item(), int(s.n_tokens.item())))
    got = score_rows(model, rows, pad_id=tok.pad_token_id, batch_size=4)
    for g, e in zip(got, expected):
        assert (g is None) == (e is None)
        if e is not None:
            assert g[1] == e[1] and g[0] == pytest.approx(e[0], abs=1e-5, rel=1e-6)


def test_gradient_checkpointing_turns_prompt_sharing_off(tok):
    """Hugging Face checkpointing drops the key/value cache in training: score_batch must not share
    prompts then, and still equals the plain path."""
    m = load_model({"source": "tiny"}, tok)
    (getattr(m, "activation_checkpointing_enable", None) or m.gradient_checkpointing_enable)()  # renamed in 5.x
    m.train()
    batch = pair_batch(tok)
    nll = build_loss("nll")
    assert_same(m, lambda s: nll(scores=s).loss, lambda: plain_scores(m, batch), lambda: score_batch(m, batch))


@pytest.mark.parametrize("ac", [False, True], ids=["fsdp2", "fsdp2+checkpointing"])
def test_fsdp2_sharded_model_takes_the_plain_path(tok, tmp_path, ac):
    """Under FSDP2 the root (and its tied head) is sharded: its weight is whole only inside
    model.forward, so score_batch must fall back to the plain path, and equal it. Checkpoint-wrapped
    blocks (lnrl.distributed.apply_activation_checkpointing) must not share prompts either."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from lnrl.distributed import apply_activation_checkpointing, shard_model

    plain_model = load_model({"source": "tiny"}, tok)
    batch = pair_batch(tok)
    nll = build_loss("nll")
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        m = load_model({"source": "tiny"}, tok)
        shard_model(m, init_device_mesh("cpu", (1,)), activation_checkpointing=ac)
        m.train()
        with torch.no_grad():
            got = score_batch(m, batch).logp_sum
        torch.testing.assert_close(got, plain_scores(plain_model, batch).logp_sum, atol=1e-5, rtol=1e-5)
        nll(scores=score_batch(m, batch)).loss.backward()  # the sharded backward runs
    finally:
        dist.destroy_process_group()
    if ac:  # checkpointing without sharding: the fast head, no prompt sharing, same numbers
        m = load_model({"source": "tiny"}, tok)
        apply_activation_checkpointing(m)
        m.train()
        assert_same(m, lambda s: nll(scores=s).loss, lambda: plain_scores(m, batch), lambda: score_batch(m, batch))


def test_lora_model_matches_plain_path(tok):
    """A LoRA-wrapped model (lnrl.models.lora, frozen base and head): the adapters' gradients match,
    with the adapters on (policy) and off (the live reference, no gradient)."""
    pytest.importorskip("peft")
    from lnrl.models.lora import apply_lora

    m = apply_lora(load_model({"source": "tiny"}, tok), {"r": 4, "alpha": 8, "dropout": 0.0,
                                                          "target_modules": "all-linear"})
    for n, p in m.named_parameters():  # B starts at zero: move it so the adapters matter
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    m.train()
    batch = group_batch(tok)
    nll = build_loss("nll")
    _, grads = assert_same(m, lambda s: nll(scores=s).loss, lambda: plain_scores(m, batch, ("", "gold_")),
                           lambda: score_batch(m, batch, prefixes=("", "gold_")))
    assert grads and all("lora_" in n for n in grads)
    with torch.no_grad(), m.disable_adapter():
        torch.testing.assert_close(score_batch(m, batch).logp_sum, plain_scores(m, batch).logp_sum,
                                   atol=1e-5, rtol=1e-5)
    empty = SFTCollator(tok.pad_token_id)([{"input_ids": [1, 2, 3], "completion_mask": [0, 0, 0]}])
    nll(scores=score_batch(m, empty)).loss.backward()  # nothing scored: still a graph to run
