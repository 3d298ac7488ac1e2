"""Peer parity with TRL 1.16's DPOTrainer.

Same fp32 tiny Llama, same reference (a perturbed copy, so the log-ratios are not zero), same
collated batch: TRL's `compute_loss` and our `sequence_logps` + loss agree within 1e-5 for
loss_type sigmoid (our dpo, normalize=sum), sigmoid_norm (dpo, normalize=mean) and ipo (ipo, mean),
and so do the policy gradients. For sigmoid, rewards/chosen and rewards/rejected match TRL's too.
"""

from __future__ import annotations

import math

import pytest
import torch

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from lnrl.losses import build_loss  # noqa: E402
from lnrl.models import load_model, load_tokenizer  # noqa: E402
from lnrl.scoring import sequence_logps  # noqa: E402

BETA = 0.5
OURS = {"sigmoid": ("dpo", "sum"), "sigmoid_norm": ("dpo", "mean"), "ipo": ("ipo", "mean")}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer({"source": "tiny"})


def models(tokenizer):
    policy = load_model({"source": "tiny"}, tokenizer)
    ref = load_model({"source": "tiny"}, tokenizer)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return policy, ref


def dataset():
    return datasets.Dataset.from_dict({
        "prompt": ["What is 2+3?", "Compute 7*6.", "Tom has 3 apples and buys 4 more. How many?"],
        "chosen": [" 2+3=5. #### 5", " 42", " 3 + 4 = 7 apples. #### 7"],
        "rejected": [" It is 6.", " 7*6 = 13 so #### 13", " 12"],
    })


@pytest.mark.parametrize("loss_type", list(OURS))
def test_loss_and_rewards_match_trl(loss_type, tokenizer, tmp_path):
    datasets.disable_progress_bars()
    policy, ref = models(tokenizer)
    args = trl.DPOConfig(output_dir=str(tmp_path), loss_type=loss_type, beta=BETA, precompute_ref_log_probs=False,
                         report_to=[], bf16=False, use_cpu=True, gradient_checkpointing=False, seed=0)
    trainer = trl.DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=dataset(),
                             processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    policy.train()

    trl_loss = trainer.compute_loss(policy, batch)
    trl_loss.backward()
    trl_grads = [p.grad.clone() for p in policy.parameters()]
    policy.zero_grad()
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    # Our side: the same ids and completion mask, plain forward (TRL's patched forward falls through to it).
    ids, attn, mask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    chosen, rejected = sequence_logps(policy(input_ids=ids, attention_mask=attn).logits, ids, mask).chunk(2)
    with torch.no_grad():
        ref_chosen, ref_rejected = sequence_logps(ref(input_ids=ids, attention_mask=attn).logits, ids, mask).chunk(2)
    name, normalize = OURS[loss_type]
    out = build_loss(name, beta=BETA, normalize=normalize)(
        policy_chosen=chosen, policy_rejected=rejected, ref_chosen=ref_chosen, ref_rejected=ref_rejected)
    out.loss.backward()

    assert out.loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    if loss_type != "ipo":  # not the trivial policy == reference value
        assert abs(out.loss.item() - math.log(2)) > 1e-3
    for ours, theirs in zip((p.grad for p in policy.parameters()), trl_grads):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-4)
    assert out.metrics["logps/chosen"].item() == pytest.approx(logged["logps/chosen"], abs=1e-4)
    assert out.metrics["logps/rejected"].item() == pytest.approx(logged["logps/rejected"], abs=1e-4)
    if loss_type == "sigmoid":
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
            assert out.metrics[key].item() == pytest.approx(logged[key], abs=1e-5), key
