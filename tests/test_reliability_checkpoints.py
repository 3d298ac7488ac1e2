"""Checkpoints and files that survive kills and full disks (issue 10).

Lightning saved a checkpoint to a temporary file under the system temp dir and moved it into place;
across filesystems the move is copy-then-write, and a `kill -9` during it left `last.ckpt` at 0 bytes
(the previous good checkpoint gone); a full disk left a truncated one. AtomicCheckpointIO writes
next to the destination, fsyncs and renames; check_checkpoint names a damaged file and the newest
intact one beside it.
"""

from __future__ import annotations

import builtins
import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import lnrl.atomic
from lnrl.atomic import atomic_write_text
from lnrl.checkpoint_io import AtomicCheckpointIO, CheckpointError, check_checkpoint

REPO = Path(__file__).resolve().parents[1]


def ckpt(step: int, n: int = 1000) -> dict:
    """A Lightning-shaped checkpoint whose every weight equals its step (so a mix would show)."""
    return {"epoch": 0, "global_step": step, "pytorch-lightning_version": "2.6.0",
            "state_dict": {"w": torch.full((n,), float(step))}, "optimizer_states": [], "lr_schedulers": []}


def temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------- full disk


class FullDisk:
    """A file that takes `room` bytes, then fails like a full disk (ENOSPC)."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            self.f.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.fixture
def full_disk(monkeypatch):
    """Every atomic write after this gets `room` bytes; returns a setter for room."""
    state = {"room": 10_000}

    def fake_open(fd, mode, encoding=None):
        return FullDisk(builtins.open(fd, mode, encoding=encoding), state["room"])

    monkeypatch.setattr(lnrl.atomic, "open", fake_open, raising=False)
    return state


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, full_disk):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    full_disk["room"] = 10**9
    io.save_checkpoint(ckpt(1, n=100_000), path)
    good = path.read_bytes()
    full_disk["room"] = 50_000  # the new checkpoint (400 kB of weights) does not fit
    with pytest.raises((OSError, RuntimeError)) as e:
        io.save_checkpoint(ckpt(2, n=100_000), path)
    assert any("previous content is intact" in n for n in getattr(e.value, "__notes__", []))
    assert path.read_bytes() == good and temps(path.parent) == []
    assert check_checkpoint(path)["global_step"] == 1


def test_full_disk_keeps_the_previous_text_file(tmp_path, full_disk):
    path = tmp_path / "metrics.json"
    full_disk["room"] = 10**6
    atomic_write_text(path, '{"old": true}\n')
    full_disk["room"] = 10
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(path, '{"new": "' + "x" * 100 + '"}\n')
    assert path.read_text() == '{"old": true}\n' and temps(tmp_path) == []


def test_atomic_write_keeps_permissions_of_a_plain_write(tmp_path):
    plain, atomic = tmp_path / "plain.txt", tmp_path / "atomic.txt"
    plain.write_text("x")
    atomic_write_text(atomic, "x")
    assert atomic.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    os.chmod(atomic, 0o640)
    atomic_write_text(atomic, "y")  # replacing a file keeps its mode
    assert atomic.stat().st_mode & 0o777 == 0o640 and atomic.read_text() == "y"


# ----------------------------------------------------------------------------- damaged checkpoints


def test_check_checkpoint_names_the_damage_and_the_newest_intact_one(tmp_path):
    io = AtomicCheckpointIO()
    d = tmp_path / "checkpoints"
    io.save_checkpoint(ckpt(50), d / "step50.ckpt")
    io.save_checkpoint(ckpt(100), d / "step100.ckpt")
    io.save_checkpoint(ckpt(120), d / "last.ckpt")
    assert check_checkpoint(d / "last.ckpt") == {"path": str(d / "last.ckpt"), "global_step": 120, "epoch": 0}
    good = (d / "last.ckpt").read_bytes()
    os.utime(d / "step50.ckpt", (time.time() + 10,) * 2)  # "newest" goes by modification time
    (d / "step100.ckpt").write_bytes(b"")  # newer than step50 but empty: skipped as a candidate
    os.utime(d / "step100.ckpt", (time.time() + 20,) * 2)
    for damage, what in [
        (b"", "empty"),
        (good[: len(good) // 2], "truncated"),
        (good[:-200] + bytes(200), "truncated"),
        (good[:1000] + bytes(len(good) - 2000) + good[-1000:], "corrupt"),  # zeroed middle: CRC
    ]:
        (d / "last.ckpt").write_bytes(damage)
        with pytest.raises(CheckpointError) as e:
            check_checkpoint(d / "last.ckpt")
        msg = str(e.value)
        assert msg.startswith(f"{d / 'last.ckpt'}: cannot resume from it: ") and what in msg, msg
        assert f"newest intact checkpoint beside it is {d / 'step50.ckpt'} (step 50)" in msg, msg
    (d / "step50.ckpt").unlink()
    with pytest.raises(CheckpointError, match=rf"no intact checkpoint in {d}"):
        check_checkpoint(d / "last.ckpt")
    with pytest.raises(CheckpointError, match=r"absent.ckpt: cannot resume from it: no such file"):
        check_checkpoint(d / "absent.ckpt")


def test_check_checkpoint_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": {}, "global_step": 1, "hook": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match=r"evil.ckpt: cannot resume from it: .*outside the weights-only allow-list"):
        check_checkpoint(tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "evil.ckpt")
    assert not marker.exists()
    # plain data Lightning callbacks may hold (a Path) is allowed
    torch.save({**ckpt(3), "callbacks": {"cb": {"dirpath": tmp_path}}}, tmp_path / "ok.ckpt")
    assert AtomicCheckpointIO().load_checkpoint(tmp_path / "ok.ckpt")["callbacks"]["cb"]["dirpath"] == tmp_path


def test_lightning_saves_through_the_plugin_and_refuses_a_damaged_resume(tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.demos.boring_classes import BoringModel

    def trainer(max_steps):
        return pl.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, plugins=[AtomicCheckpointIO()], default_root_dir=tmp_path,
                          callbacks=[ModelCheckpoint(dirpath=tmp_path / "ck", filename="step{step}",
                                                     auto_insert_metric_name=False, every_n_train_steps=1,
                                                     save_top_k=-1, save_last=True)])

    trainer(3).fit(BoringModel())
    d = tmp_path / "ck"
    assert sorted(p.name for p in d.iterdir()) == ["last.ckpt", "step1.ckpt", "step2.ckpt", "step3.ckpt"]
    assert check_checkpoint(d / "last.ckpt")["global_step"] == 3
    last = d / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=rf"last.ckpt: cannot resume from it: .*truncated.*{d / 'step3.ckpt'}"):
        trainer(5).fit(BoringModel(), ckpt_path=last)


# ----------------------------------------------------------------------------- kill -9 (subprocess)

SAVER = textwrap.dedent("""
    import os, sys, torch
    path, io_name = sys.argv[1], sys.argv[2]
    if io_name == "lnrl":
        from lnrl.checkpoint_io import AtomicCheckpointIO as IO
    else:
        from lightning.pytorch.plugins.io import TorchCheckpointIO as IO
    io = IO()
    step = 0
    while True:
        step += 1
        io.save_checkpoint({"global_step": step, "epoch": 0,
                            "state_dict": {"w": torch.full((4_000_000,), float(step))}}, path)
        print(step, flush=True)
""")


def run_and_kill(path: Path, io_name: str, delay: float, env: dict) -> int:
    """Start the saver, let it write at least one checkpoint, SIGKILL it `delay` s later; the last step it reported."""
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path), io_name], stdout=subprocess.PIPE, text=True,
                            env=env, cwd=REPO)
    try:
        first = proc.stdout.readline()  # one checkpoint complete
        assert first.strip(), "saver died before its first checkpoint"
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
    return int((first + out).split()[-1])


@pytest.mark.slow
def test_sigkill_at_random_moments_always_leaves_a_complete_checkpoint(tmp_path):
    # 16 MB checkpoints, so most kills land inside a write (a temporary file is then left behind).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    path = tmp_path / "checkpoints" / "last.ckpt"
    rng = random.Random(0)
    mid_write = 0
    for _ in range(6):
        reported = run_and_kill(path, "lnrl", rng.uniform(0.0, 0.6), env)
        mid_write += bool(temps(path.parent))
        info = check_checkpoint(path)
        # the file holds a whole checkpoint: the last reported one or the one after it (written,
        # renamed, killed before it could print)
        assert info["global_step"] in (reported, reported + 1)
        w = torch.load(path, weights_only=True)["state_dict"]["w"]
        assert bool((w == info["global_step"]).all())
        assert len(temps(path.parent)) <= 1  # a new run removes the temporary file of the killed one
    assert mid_write >= 1, "no kill landed inside a write: the test did not exercise the fault"
    AtomicCheckpointIO().save_checkpoint(ckpt(0), path)
    assert temps(path.parent) == []


@pytest.mark.slow
def test_file_size_limit_keeps_the_previous_checkpoint(tmp_path):
    # A real write error from the kernel (EFBIG past RLIMIT_FSIZE) part way through torch.save.
    script = textwrap.dedent("""
        import resource, signal, sys, torch
        from lnrl.checkpoint_io import AtomicCheckpointIO
        path = sys.argv[1]
        io = AtomicCheckpointIO()
        io.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.ones(1000)}}, path)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))
        try:
            io.save_checkpoint({"global_step": 2, "state_dict": {"w": torch.ones(1_000_000)}}, path)
        except Exception as e:
            print("failed:", type(e).__name__, e.__notes__)
        else:
            print("saved")
    """)
    path = tmp_path / "last.ckpt"
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("failed:") and "previous content is intact" in out.stdout, out.stdout
    assert check_checkpoint(path)["global_step"] == 1 and temps(tmp_path) == []
