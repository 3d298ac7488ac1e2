"""lnrl-export: a checkpoint (one file or a sharded directory) -> a save_pretrained dir that model=hf loads."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from lnrl.apps.export import main
from lnrl.models import export_checkpoint, policy_state, read_checkpoint
from lnrl.models import load_model, load_tokenizer

TINY_CFG = {"source": "tiny", "name": "tiny-llama", "num_layers": 2, "init_seed": 0}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer({"source": "tiny"})


@pytest.fixture(scope="module")
def trained(tok):
    """A tiny model whose weights differ from a fresh one (so a wrong load cannot pass)."""
    model = load_model(TINY_CFG, tok)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


def module_state(model, extra: dict | None = None) -> dict[str, torch.Tensor]:
    """What LnrlModule.state_dict() holds: the HF model under `model.`, plus e.g. a reference model."""
    return {**{f"model.{k}": v.clone() for k, v in model.state_dict().items()}, **(extra or {})}


def same_logits(a, b) -> None:
    x = torch.randint(3, 2000, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(a(input_ids=x).logits, b(input_ids=x).logits, rtol=0, atol=0)


def test_file_checkpoint_exports_the_policy_only(tmp_path, tok, trained):
    """Single-file .ckpt: the `model.` weights (not a reference model's) become the HF model."""
    ref_noise = {"reference.lm_head.weight": torch.zeros(3, 3)}
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": module_state(trained, ref_noise), "global_step": 7, "lnrl_model_cfg": TINY_CFG}, ckpt)
    out = export_checkpoint(ckpt)
    assert out == ckpt.parent / "last_hf"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    loaded = load_model({"source": "hf", "path": str(out)})
    same_logits(loaded, trained)
    # tied embedding/head stay tied after the round trip
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert load_tokenizer({"source": "hf", "path": str(out)}).chat_template == tok.chat_template


def test_sharded_directory_checkpoint_exports(tmp_path, trained):
    """A torch.distributed.checkpoint directory (what ModelParallelStrategy writes) plus meta.pt."""
    import torch.distributed.checkpoint as dcp

    ckpt = tmp_path / "last.ckpt"
    optimizer_state = {"state": {"0": {"exp_avg": torch.ones(4)}}}
    dcp.save({"state_dict": module_state(trained), "optimizer_0": optimizer_state}, checkpoint_id=str(ckpt))
    torch.save({"global_step": 3, "lnrl_model_cfg": TINY_CFG}, ckpt / "meta.pt")
    state, meta = read_checkpoint(ckpt)
    assert meta["global_step"] == 3 and all(k.startswith("model.") for k in state)  # no optimizer states read
    out = export_checkpoint(ckpt, tmp_path / "hf", tokenizer=False)
    assert not (out / "tokenizer.json").exists()
    same_logits(load_model({"source": "hf", "path": str(out)}), trained)


def test_model_config_falls_back_to_hyperparameters_then_the_run_hydra_config(tmp_path, trained):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    hp = run / "checkpoints" / "hp.ckpt"
    torch.save({"state_dict": module_state(trained), "hyper_parameters": {"model": TINY_CFG}}, hp)
    same_logits(load_model({"source": "hf", "path": str(export_checkpoint(hp))}), trained)
    bare = run / "checkpoints" / "bare.ckpt"
    torch.save({"state_dict": module_state(trained)}, bare)
    with pytest.raises(ValueError, match=r"bare\.ckpt: cannot tell which model"):
        export_checkpoint(bare)
    OmegaConf.save(OmegaConf.create({"paths": {"cache_dir": None}, "model": {**TINY_CFG, "cache_dir": "${paths.cache_dir}"}}),
                   run / ".hydra" / "config.yaml")
    same_logits(load_model({"source": "hf", "path": str(export_checkpoint(bare))}), trained)


def test_bad_inputs_name_the_path(tmp_path, trained):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        export_checkpoint(tmp_path / "nope.ckpt")
    plain_dir = tmp_path / "dir.ckpt"
    plain_dir.mkdir()
    with pytest.raises(ValueError, match=r"dir\.ckpt: a directory but not a sharded checkpoint"):
        export_checkpoint(plain_dir)
    not_lightning = tmp_path / "weights.pt"
    torch.save(trained.state_dict(), not_lightning)
    with pytest.raises(ValueError, match=r"weights\.pt: not a Lightning checkpoint"):
        export_checkpoint(not_lightning)
    with pytest.raises(KeyError, match="no 'model.\\*' weights"):
        policy_state({"encoder.weight": torch.zeros(1)})
    wrong = tmp_path / "wrong.ckpt"
    torch.save({"state_dict": {"model.model.bogus.weight": torch.zeros(2), **module_state(trained)},
                "lnrl_model_cfg": TINY_CFG}, wrong)
    with pytest.raises(KeyError, match="unexpected.*bogus"):
        export_checkpoint(wrong, tmp_path / "out", tokenizer=False)


def test_cli(tmp_path, trained, capsys):
    ckpt = tmp_path / "x.ckpt"
    torch.save({"state_dict": module_state(trained)}, ckpt)  # no config inside: given on the command line
    main([str(ckpt), "-o", str(tmp_path / "cli"), "--model-source", "tiny", "--no-tokenizer"])
    out = tmp_path / "cli"
    assert capsys.readouterr().out.strip() == str(out)
    same_logits(load_model({"source": "hf", "path": str(out)}), trained)
