"""What lnrl-train, lnrl-sample and lnrl-export read and write (issue 10), through the real entry points.

Before: lnrl-sample ckpt_path= and lnrl-export unpickled checkpoints with weights_only=False (a crafted
checkpoint ran code); the atomic checkpoint plugin existed but no trainer config used it; a damaged
last.ckpt given as ckpt_path failed inside Lightning with an empty EOFError; write_json wrote in place.
"""

from __future__ import annotations

import builtins
import errno
import os

import pytest
import torch

import lnrl.atomic
from conftest import TINY, compose_cfg
from lnrl.apps.train import train
from lnrl.checkpoint_io import AtomicCheckpointIO, CheckpointError
from lnrl.models import export_checkpoint, load_policy
from lnrl.models.checkpoint import read_checkpoint
from lnrl.utils import write_json, write_jsonl


@pytest.fixture
def evil(tmp_path):
    """A checkpoint-shaped pickle that would create a file when unpickled with weights_only=False."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(2)}, "lnrl_model_cfg": {"source": "tiny"}, "x": Evil()}, path)
    return path, marker


@pytest.mark.parametrize("reader", ["read_checkpoint", "lnrl-export", "lnrl-sample"])
def test_a_crafted_checkpoint_runs_no_code_and_is_refused_by_name(reader, evil, tmp_path):
    path, marker = evil
    load = {"read_checkpoint": lambda: read_checkpoint(path),
            "lnrl-export": lambda: export_checkpoint(path, tmp_path / "out"),
            "lnrl-sample": lambda: load_policy({"source": "tiny"}, ckpt_path=path)}[reader]
    with pytest.raises(CheckpointError, match=rf"{path}: holds objects outside the weights-only allow-list, refused "
                                              rf"unread"):
        load()
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_lnrl_train_saves_through_the_plugin_and_its_checkpoints_load_weights_only(tmp_path, monkeypatch):
    saved = []
    real = AtomicCheckpointIO.save_checkpoint
    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", lambda self, ckpt, path, storage_options=None:
                        saved.append(str(path)) or real(self, ckpt, path, storage_options))
    train(compose_cfg([*TINY, "trainer.max_steps=2", "eval.enabled=false", "export_hf=false"], tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert str(last) in saved
    state, meta = read_checkpoint(last)  # weights-only: an lnrl checkpoint holds nothing else
    assert meta["global_step"] == 2 and meta["lnrl_model_cfg"]["source"] == "tiny"
    assert any(k.startswith("model.") for k in state)


def test_resume_from_a_damaged_checkpoint_names_it_and_the_newest_intact_one(tmp_path):
    common = [*TINY, "eval.enabled=false", "export_hf=false", "callbacks.checkpoint.every_n_train_steps=1",
              "callbacks.checkpoint.save_top_k=-1"]
    train(compose_cfg([*common, "trainer.max_steps=2"], tmp_path))
    ckpts = tmp_path / "checkpoints"
    last = ckpts / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # a copy cut short by a kill
    with pytest.raises(CheckpointError, match=rf"{last}: cannot resume from it: truncated.* The newest intact "
                                              rf"checkpoint beside it is {ckpts}/step2.ckpt \(step 2\)"):
        train(compose_cfg([*common, "trainer.max_steps=4", f"ckpt_path={last}"], tmp_path))


def test_json_writers_leave_the_old_file_on_a_failed_write(tmp_path, monkeypatch):
    path, rows = tmp_path / "metrics.json", tmp_path / "generations.jsonl"
    write_json(path, {"old": True})
    write_jsonl(rows, [{"old": True}])
    before = path.read_text(), rows.read_text()

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[:5])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(lnrl.atomic, "open", raising=False,
                        value=lambda fd, mode, encoding=None: FullDisk(builtins.open(fd, mode, encoding=encoding)))
    with pytest.raises(OSError, match="No space left"):
        write_json(path, {"new": "x" * 100})
    with pytest.raises(OSError, match="No space left"):
        write_jsonl(rows, [{"new": "x" * 100}])
    assert (path.read_text(), rows.read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generations.jsonl", "metrics.json"]  # no temp left
