"""LoRA (model.lora): only the adapters train, the adapter-disabled policy is the exact base model (the live
reference), and exports merge the adapters so a plain model loads.

A fresh adapter has B = 0, so at step 0 the policy equals its live reference and DPO's loss is
-log sigmoid(0) = ln 2 (the embedded-model test checks this on SmolLM2-135M-Instruct).
"""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lnrl.models import export_checkpoint, load_model, load_policy, load_tokenizer, policy_state, read_checkpoint
from lnrl.models.lora import LORA_DEFAULTS, apply_lora, lora_spec, merge_lora_state
from lnrl.scoring import sequence_logps

FIXTURES = Path(__file__).resolve().parents[1] / "lnrl" / "fixtures"
TINY = {"source": "tiny", "name": "tiny-llama", "init_seed": 0}
LORA = {"r": 4, "alpha": 8, "save_adapter": True}
LN2 = math.log(2.0)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TINY)


@pytest.mark.parametrize("lora,message", [
    ({"rank": 8}, "model.lora.rank: unknown field; model.lora accepts"),
    ({"r": 0}, "model.lora.r=0: expected an integer rank >= 1"),
    ({"alpha": -1}, "model.lora.alpha=-1: expected a number > 0"),
    ({"dropout": 1.0}, r"model.lora.dropout=1.0: expected a number in \[0, 1\)"),
    ({"target_modules": []}, "model.lora.target_modules=\\[\\]: expected 'all-linear' or a list"),
    (8, "model.lora=8: expected null"),
])
def test_bad_lora_config_names_the_key(lora, message):
    with pytest.raises(ValueError, match=message):
        lora_spec({"lora": lora})


def test_spec_defaults_and_off():
    assert lora_spec({"lora": None}) is None and lora_spec({}) is None
    assert lora_spec({"lora": {"r": 16}}) == {**LORA_DEFAULTS, "r": 16}


def test_merge_equals_peft_merge_and_unload(tok):
    """W + (alpha/r) B A computed on the state dict agrees with peft's own merge, on every weight."""
    spec = lora_spec({"lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]}})
    model = apply_lora(load_model(TINY, tok), spec)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)  # a trained adapter: B != 0
    ours = merge_lora_state(model.state_dict(), spec)
    theirs = copy.deepcopy(model).merge_and_unload().state_dict()
    assert set(ours) == set(theirs)
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6)
    assert not torch.equal(ours["model.layers.0.self_attn.q_proj.weight"],
                           load_model(TINY, tok).state_dict()["model.layers.0.self_attn.q_proj.weight"])


def test_fsdp1_is_refused_naming_both_keys(tok):
    from lightning.pytorch.strategies import FSDPStrategy

    from lnrl.methods import PairModule

    module = PairModule(model={**TINY, "lora": LORA}, loss={"name": "dpo"}, tokenizer=tok,
                        optim={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3})
    module._trainer = SimpleNamespace(strategy=FSDPStrategy())
    with pytest.raises(ValueError, match="model.lora is set but trainer=fsdp .* use trainer=fsdp2"):
        module.configure_model()


# ----------------------------------------------------------------------------- a trained LoRA run (tiny model)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    """method=dpo with a live reference, LoRA r=4, 4 steps at a high lr, a checkpoint and an hf_model export."""
    from conftest import TINY as TINY_OVERRIDES, compose_cfg
    from lnrl.apps.train import train

    run_dir = tmp_path_factory.mktemp("lora")
    train(compose_cfg([*TINY_OVERRIDES, "experiment=fixtures", "method=dpo", "method.reference=live",
                       "model.lora={r:4,alpha:8,save_adapter:true}", "optim.lr=0.05", "trainer.max_steps=4",
                       "callbacks=default", "export_hf=true", "eval.enabled=false", "logger=csv",
                       "trainer.limit_val_batches=0"], run_dir))
    return run_dir


def test_only_the_adapters_train_and_the_optimizer_holds_only_them(lora_run, tok):
    state, meta = read_checkpoint(lora_run / "checkpoints" / "last.ckpt")
    weights = policy_state(state)
    base = load_model(TINY, tok).state_dict()
    adapters = {k for k in weights if ".lora_" in k}
    assert adapters and all(".lora_A.default." in k or ".lora_B.default." in k for k in adapters)
    for key, value in weights.items():
        if key in adapters:
            continue
        plain = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
        assert torch.equal(value, base[plain]), f"{key} changed: the base weights must stay frozen"
    assert any(weights[k].abs().sum() > 0 for k in adapters if ".lora_B." in k)  # B moved off zero
    # Adam keeps moments only for what it optimizes: the adapter matrices.
    (opt,) = meta["optimizer_states"]
    assert len(opt["param_groups"][0]["params"]) == len(adapters) == len(opt["state"])


def test_live_reference_is_the_base_model_exactly(lora_run, tok):
    """With the trained adapter disabled the policy scores rows bit for bit like the base model."""
    from lnrl.data import LnrlDataModule
    from lnrl.methods import PairModule

    module = PairModule(model={**TINY, "lora": LORA}, loss={"name": "dpo"}, tokenizer=tok, reference="live",
                        optim={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3})
    module.configure_model()
    assert module.ref_model is None  # no second copy
    state, _ = read_checkpoint(lora_run / "checkpoints" / "last.ckpt")
    module.load_state_dict(state)
    dm = LnrlDataModule(source={"name": "gsm_symbolic", "n_train": 2, "n_eval": 2}, kind="pairs",
                        prefs_path=str(FIXTURES / "groups_tiny.jsonl"), max_length=256, batch_size=4, tokenizer=tok)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    base = load_model(TINY, tok)
    for fast_scoring in (True, False):  # the fast scoring path (the default), then the plain forward
        module.fast_scoring = fast_scoring
        ref = module.live_reference(batch)
        with torch.no_grad():
            want = module.score_with(base, batch)
        assert torch.equal(ref.logp_sum, want.logp_sum) and torch.equal(ref.n_tokens, want.n_tokens)
    with torch.no_grad():  # and the plain path is the independent one: the base model's own logits
        plain = sequence_logps(base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                               batch["input_ids"], batch["completion_mask"])
    assert torch.equal(ref.logp_sum, plain.logp_sum)
    with torch.no_grad():
        assert not torch.allclose(module.score(batch).logp_sum, want.logp_sum)  # the policy itself moved


def test_exports_are_plain_merged_models(lora_run, tok):
    from peft import PeftModel

    x = torch.tensor([tok("What is 2 + 3? #### 5").input_ids])
    hf = load_policy({"source": "hf", "name": "x", "path": str(lora_run / "hf_model")}).model
    assert type(hf).__name__ == "LlamaForCausalLM"
    # The same weights through lnrl-export of the checkpoint, and through load_policy of the checkpoint.
    exported = load_policy({"source": "hf", "path": str(export_checkpoint(lora_run / "checkpoints" / "last.ckpt",
                                                                           lora_run / "exported"))}).model
    from_ckpt = load_policy(TINY, lora_run / "checkpoints" / "last.ckpt").model
    for a, b in zip(hf.state_dict().values(), exported.state_dict().values()):
        assert torch.equal(a, b)
    with torch.no_grad():
        logits = hf(input_ids=x).logits
        torch.testing.assert_close(from_ckpt(input_ids=x).logits, logits, rtol=0, atol=0)
        # The adapter in PEFT's format on the base model gives the merged model's outputs.
        adapter = PeftModel.from_pretrained(load_model(TINY, tok), str(lora_run / "hf_model" / "adapter"))
        torch.testing.assert_close(adapter(input_ids=x).logits, logits, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(load_model(TINY, tok)(input_ids=x).logits, logits)  # training changed it


# ----------------------------------------------------------------------------- the embedded model


@pytest.mark.slow
def test_lora_trains_the_embedded_model_on_cpu(tmp_path):
    """SmolLM2-135M-Instruct with LoRA r=8: 3 DPO steps, live reference = adapter off. Step 0 is exactly
    ln 2 (B = 0: policy = reference); the loss then moves, and only the ~1.6 M adapter weights train."""
    from conftest import TINY as TINY_OVERRIDES, compose_cfg
    from lnrl.apps.train import train

    metrics = train(compose_cfg([*TINY_OVERRIDES, "experiment=fixtures", "model=smollm2_135m", "method=dpo",
                                 "method.reference=live", "model.lora={r:8,alpha:16}", "optim.lr=1e-3",
                                 "trainer.max_steps=3", "eval.enabled=false", "logger=csv", "export_hf=true",
                                 "trainer.limit_val_batches=0"], tmp_path))
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        losses = {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}
    assert losses[0] == pytest.approx(LN2, abs=1e-5) and losses[2] != pytest.approx(LN2, abs=1e-4)
    assert metrics["global_step"] == 3
    model = load_policy({"source": "hf", "path": str(tmp_path / "hf_model")}).model
    assert type(model).__name__ == "LlamaForCausalLM"
