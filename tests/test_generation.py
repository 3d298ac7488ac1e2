"""The generation engine (lnrl.generation) against transformers' generate and a cache-free reference.

The tiny test model is re-randomised so its greedy outputs differ between prompts, and its <|im_end|>
embedding is scaled up so rows stop at different steps: with the stock tiny model every prompt decodes
the same token forever and no row ever finishes, which would let most of these tests pass vacuously.
"""

from __future__ import annotations

import pytest
import torch

from lnrl.data.tokenize import encode_prompt
from lnrl.generation import (CANDIDATES, Generation, Sampling, common_prefix, decode_tokens, generate, pick_tokens,
                             prefill_chunks, token_key)
from lnrl.models import load_model, load_tokenizer

QUESTIONS = [f"Question {i}: what is {i} + {i * 7}? Explain {'slowly ' * (i % 5)}" for i in range(24)]
# top_k keeps most tests on the fast path: this model's distributions are flat, so a top-p-only nucleus
# holds thousands of tokens and takes the full-sort path (tested on its own below).
SAMPLE = dict(do_sample=True, temperature=1.0, top_p=0.9, top_k=50)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer({"source": "tiny"})


@pytest.fixture(scope="module")
def model(tok):
    model = load_model({"source": "tiny"}, tok).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.35 if "embed" in name else 0.3))
        model.model.embed_tokens.weight[tok.eos_token_id] *= 2.5  # tied: <|im_end|> wins some steps
    return model


def hf_greedy(model, tok, question: str, max_new_tokens: int) -> list[int]:
    """transformers' generate on one unpadded prompt: the new tokens, EOS included when it came."""
    ids = torch.tensor([encode_prompt(tok, question)])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def expected(tok, new: list[int]) -> Generation:
    """What generate() must return for these new tokens, written out from its documented contract."""
    eos = tok.eos_token_id
    body = new[: new.index(eos)] if eos in new else new
    return Generation(tok.decode(body, skip_special_tokens=True).strip(), len(body), eos not in new)


def test_greedy_equals_hf_generate(model, tok):
    """Batched, left-padded, rows leaving and refilling: the same tokens as generate() prompt by prompt."""
    max_new = 24
    want = [[expected(tok, hf_greedy(model, tok, q, max_new))] for q in QUESTIONS]
    assert 0 < sum(g[0].truncated for g in want) < len(want)   # some rows finish early, some run out
    assert len({g[0].text for g in want}) > 20                  # and the prompts really decode differently
    for batch_size in (1, 5, 24):
        got = generate(model, tok, QUESTIONS, max_new_tokens=max_new, batch_size=batch_size, progress=False)
        assert got == want, f"batch_size={batch_size}"


def test_greedy_keeps_question_order(model, tok):
    got = generate(model, tok, QUESTIONS[:8], max_new_tokens=12, batch_size=3, progress=False)
    rev = generate(model, tok, QUESTIONS[:8][::-1], max_new_tokens=12, batch_size=3, progress=False)
    assert rev == got[::-1]
    assert len({g[0].text for g in got}) == 8


def naive_samples(model, tok, question_index: int, k: int, seed: int, max_new_tokens: int,
                  sampling: Sampling) -> list[list[int]]:
    """Sample j of a question with no cache, no batch and no padding: the whole sequence re-run for
    every token, each drawn with its own key."""
    prompt = encode_prompt(tok, QUESTIONS[question_index])
    out = []
    for j in range(k):
        toks = []
        while len(toks) < max_new_tokens and (not toks or toks[-1] != tok.eos_token_id):
            logits = model(input_ids=torch.tensor([prompt + toks])).logits[:, -1].float()
            key = torch.tensor([token_key(seed, question_index, j, len(toks))])
            toks.append(int(pick_tokens(logits, key, sampling)))
        out.append(toks)
    return out


@torch.no_grad()
def test_sampling_equals_a_cache_free_reference(model, tok):
    """Removing finished rows, one prefill per question and refilling change nothing: each row draws
    exactly what a lone, uncached run with the same keys draws (top-k, and top-p alone: the wide path)."""
    k, max_new = 3, 16
    prompts = [encode_prompt(tok, q) for q in QUESTIONS[:8]]
    for sampling in (Sampling(**SAMPLE), Sampling(True, 1.0, 0.9, 0)):
        got = decode_tokens(model, prompts, max_new_tokens=max_new, batch_size=3, k=k, sampling=sampling,
                            seed=11, eos_id=tok.eos_token_id)
        want = [naive_samples(model, tok, i, k, 11, max_new, sampling) for i in range(8)]
        assert got == want, sampling
    lengths = [len(t) for rows in got for t in rows]
    assert min(lengths) < max_new and max(lengths) == max_new


def test_samples_do_not_depend_on_batching(model, tok):
    """The same seed gives the same samples whatever batch size, token budget or refill policy."""
    runs = [generate(model, tok, QUESTIONS[:12], max_new_tokens=16, batch_size=b, num_return_sequences=4, seed=3,
                     max_batch_tokens=t, progress=False, **SAMPLE)
            for b, t in ((1, 32768), (5, 32768), (12, 400))]
    assert all(r == runs[0] for r in runs[1:])
    prompts = [encode_prompt(tok, q) for q in QUESTIONS[:12]]
    kw = dict(max_new_tokens=16, batch_size=5, k=4, sampling=Sampling(**SAMPLE), seed=3, eos_id=tok.eos_token_id)
    assert decode_tokens(model, prompts, refill=False, **kw) == decode_tokens(model, prompts, refill=True, **kw)
    assert len({g.text for g in runs[0][0]}) == 4  # the k samples of a question differ
    other = generate(model, tok, QUESTIONS[:12], max_new_tokens=16, batch_size=5, num_return_sequences=4, seed=4,
                     progress=False, **SAMPLE)
    assert other != runs[0]
    # seed=None takes its seed from torch's global RNG, so torch.manual_seed fixes the samples.
    unseeded = []
    for _ in range(2):
        torch.manual_seed(0)
        unseeded.append(generate(model, tok, QUESTIONS[:4], max_new_tokens=8, num_return_sequences=2,
                                 progress=False, **SAMPLE))
    assert unseeded[0] == unseeded[1]


def test_shapes_flags_and_counts(model, tok):
    gens = generate(model, tok, QUESTIONS[:5], max_new_tokens=10, batch_size=2, num_return_sequences=3, seed=0,
                    progress=False, **SAMPLE)
    assert [len(g) for g in gens] == [3] * 5
    flat = [g for row in gens for g in row]
    assert all(g.truncated == (g.n_tokens == 10) for g in flat)   # no EOS within the budget <=> cut at it
    assert any(g.truncated for g in flat) and any(not g.truncated for g in flat)
    assert generate(model, tok, [], max_new_tokens=4, progress=False) == []


def test_one_prefill_per_question_and_finished_rows_leave(model, tok):
    """Count what the model is fed: prefill rows are questions (not questions x k), and every decode
    step feeds only rows still running, so row-steps = sum over rows of (new tokens - 1)."""
    fed = []
    handle = model.register_forward_pre_hook(lambda m, args, kw: fed.append(tuple(kw["input_ids"].shape)),
                                             with_kwargs=True)
    try:
        prompts = [encode_prompt(tok, q) for q in QUESTIONS[:6]]
        out = decode_tokens(model, prompts, max_new_tokens=16, batch_size=6, k=4, sampling=Sampling(**SAMPLE),
                            seed=0, eos_id=tok.eos_token_id)
    finally:
        handle.remove()
    shared = common_prefix(prompts)
    assert shared > 10 and fed[0] == (1, shared)                  # the chat template's prefix, run once
    prefills = [shape for shape in fed[1:] if shape[1] > 1]
    steps = [shape[0] for shape in fed[1:] if shape[1] == 1]
    assert sum(b for b, _ in prefills) == 6
    assert max(w for _, w in prefills) == max(len(p) for p in prompts) - shared   # only the rest is fed
    assert sum(steps) == sum(len(t) - 1 for rows in out for t in rows)
    assert steps[0] > steps[-1]


def test_prefill_chunks():
    """Runs of consecutive prompts whose rows x longest stay within the budget; an overlong one alone."""
    assert prefill_chunks([3, 3, 4, 5, 9, 30], 12) == [[0, 1, 2], [3], [4], [5]]   # 3 x 4 = 12 fits, 2 x 9 not
    assert prefill_chunks([2, 2, 2, 2], 8) == [[0, 1, 2, 3]]
    assert prefill_chunks([5, 1, 1], 10) == [[0, 1], [2]]   # the run's width is its longest, not its last
    assert prefill_chunks([], 8) == []


def test_common_prefix():
    assert common_prefix([[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 9]]) == 2
    assert common_prefix([[1, 2, 3], [1, 2, 3, 4]]) == 2     # each prompt keeps a token of its own
    assert common_prefix([[5, 1], [6, 1]]) == 0
    assert common_prefix([[1, 2, 3]]) == 0 and common_prefix([]) == 0


@torch.no_grad()
def test_shared_prefix_changes_no_token(model, tok):
    """Running the common prefix once and feeding the rest after it (padding between the two) gives the
    tokens of feeding every prompt whole, greedy and sampled, with rows leaving and refilling. In float64,
    so no near-tie can flip between the two batchings."""
    m = load_model({"source": "tiny"}, tok).double().eval()
    m.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    prompts = [encode_prompt(tok, q) for q in QUESTIONS[:10]] + [encode_prompt(tok, "Hi")]
    assert common_prefix(prompts) > 10
    for sampling in (Sampling(), Sampling(**SAMPLE)):
        kw = dict(max_new_tokens=16, batch_size=3, k=2, sampling=sampling, seed=5, eos_id=tok.eos_token_id)
        whole = decode_tokens(m, prompts, share_prefix=False, prefill_tokens=10**6, **kw)
        assert decode_tokens(m, prompts, **kw) == whole, sampling
        assert decode_tokens(m, prompts, prefill_tokens=20, **kw) == whole, sampling  # a prefill per question
        assert len({tuple(r[0]) for r in whole}) > 8


def test_token_budget_bounds_the_running_rows(model, tok):
    """Each running row reserves its prompt plus max_new_tokens cache slots; a budget for two questions'
    rows keeps every step at <= 2 * k rows, where the row cap alone would allow 6 * k."""
    prompts = [encode_prompt(tok, q) for q in QUESTIONS[:6]]
    k, max_new = 2, 8
    budget = k * (2 * max(map(len, prompts)) + 2 * max_new)
    assert budget < k * (sum(sorted(map(len, prompts))[:3]) + 3 * max_new)   # three never fit
    fed = []
    handle = model.register_forward_pre_hook(lambda m, args, kw: fed.append(kw["input_ids"].shape[0]),
                                             with_kwargs=True)
    try:
        decode_tokens(model, prompts, max_new_tokens=max_new, batch_size=6, k=k, sampling=Sampling(**SAMPLE),
                      seed=0, eos_id=tok.eos_token_id, max_batch_tokens=budget)
    finally:
        handle.remove()
    assert max(fed) == 2 * k


def test_restores_training_mode(model, tok):
    for mode in (True, False):
        model.train(mode)
        generate(model, tok, QUESTIONS[:2], max_new_tokens=3, progress=False)
        assert model.training is mode
    model.eval()


def test_pick_tokens_matches_transformers_warpers():
    """Draws follow the distribution transformers' warpers give (temperature -> top-k -> top-p, then
    softmax): never a token they filter out, and each kept token at its probability (20k rows, each
    with its own key: the 4-sigma band of a frequency is <= 0.0142). The flat case has a nucleus
    wider than the CANDIDATES pre-selection, so it takes the full-sort path."""
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)

    gen = torch.Generator().manual_seed(0)
    peaked, flat = torch.randn(2, 12, generator=gen) * 2, torch.randn(1, 300, generator=gen) * 0.05
    n = 20_000
    cases = [(peaked, 1.0, 0, 1.0), (peaked, 0.7, 0, 0.9), (peaked, 1.3, 5, 0.8), (peaked, 0.5, 0, 0.3),
             (peaked, 1.0, 3, 1.0), (flat, 1.0, 0, 0.9), (flat, 0.9, 40, 0.5)]
    assert flat.shape[-1] * 0.9 > CANDIDATES
    for case, (logits, temperature, top_k, top_p) in enumerate(cases):
        scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
        if top_k:
            scores = TopKLogitsWarper(top_k)(None, scores)
        scores = TopPLogitsWarper(top_p)(None, scores) if top_p < 1 else scores
        want = scores.softmax(-1).double()
        for row in range(len(logits)):
            keys = torch.tensor([token_key(case, row, i, 0) for i in range(n)])
            picks = pick_tokens(logits[row].expand(n, -1), keys, Sampling(True, temperature, top_p, top_k))
            freq = torch.bincount(picks, minlength=logits.shape[-1]).double() / n
            assert not freq[want[row] == 0].any()
            torch.testing.assert_close(freq, want[row], atol=0.0142, rtol=0)
    assert pick_tokens(peaked, None, Sampling()).tolist() == peaked.argmax(-1).tolist()


@pytest.mark.parametrize("bad, match", [(dict(temperature=0.0), "temperature=0.0"), (dict(top_p=0.0), "top_p=0.0"),
                                        (dict(top_k=-1), "top_k=-1"), (dict(batch_size=0), "batch_size=0")])
def test_rejects_bad_settings(model, tok, bad, match):
    with pytest.raises(ValueError, match=match):
        generate(model, tok, QUESTIONS[:1], **{**SAMPLE, **bad})


@pytest.mark.slow
def test_greedy_equals_hf_generate_on_the_embedded_model():
    """SmolLM2-135M on GSM-style questions: the engine's batched greedy text equals generate()'s, prompt
    by prompt (batch 1 on the transformers side: no padding there at all)."""
    from lnrl.data.sources import build_source

    tok = load_tokenizer({"source": "embedded"})
    model = load_model({"source": "embedded"}, tok).eval()
    questions = [e.question for e in build_source({"name": "gsm_symbolic", "n_train": 6, "n_eval": 2}).train[:5]]
    want = [[expected(tok, hf_greedy(model, tok, q, 48))] for q in questions]
    got = generate(model, tok, questions, max_new_tokens=48, batch_size=5, progress=False)
    assert got == want


def test_slot_layer_writes_in_place_grows_and_compacts_like_concatenation():
    """The engine's cache layer against plain torch.cat / indexing: columns written into the reserved
    slots, growth past the reserve, rows kept in place, and an out-of-order selection refused."""
    from lnrl.generation import _slot_layer_class

    g = torch.Generator().manual_seed(0)
    k0, v0 = torch.randn(4, 2, 5, 3, generator=g), torch.randn(4, 2, 5, 3, generator=g)
    layer = _slot_layer_class()(spare=2)
    layer.place(k0, v0)
    buffer = layer._k
    new = [(torch.randn(4, 2, 1, 3, generator=g), torch.randn(4, 2, 1, 3, generator=g)) for _ in range(3)]
    want_k, want_v = k0, v0
    for step, (k, v) in enumerate(new):
        got_k, got_v = layer.update(k, v)
        want_k, want_v = torch.cat([want_k, k], 2), torch.cat([want_v, v], 2)
        assert torch.equal(got_k, want_k) and torch.equal(got_v, want_v)
        assert (layer._k is buffer) == (step < 2)   # two columns reserved: the third grows the buffer
    assert layer.get_seq_length() == 8
    keep = torch.tensor([0, 2, 3])
    layer.batch_select_indices(keep)
    assert torch.equal(layer.keys, want_k[keep]) and torch.equal(layer.values, want_v[keep])
    k, v = torch.randn(3, 2, 1, 3, generator=g), torch.randn(3, 2, 1, 3, generator=g)
    got_k, _ = layer.update(k, v)
    assert torch.equal(got_k, torch.cat([want_k[keep], k], 2))
    with pytest.raises(ValueError, match="increasing"):
        layer.batch_select_indices(torch.tensor([1, 0]))
