"""The installed package: configs found from a wheel, console entry points, the embedded model."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True, text=True)
    return next(out.glob("lnrl-*.whl"))


@pytest.mark.slow  # builds (and installs) a wheel with pip in a subprocess
def test_wheel_ships_every_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {str(p.relative_to(ROOT)) for p in (ROOT / "lnrl" / "conf").rglob("*.yaml")}
    assert shipped and shipped <= names
    assert "lnrl/fixtures/groups_tiny.jsonl" in names


@pytest.mark.slow  # builds (and installs) a wheel with pip in a subprocess
def test_configs_compose_from_the_installed_wheel(wheel, tmp_path):
    """Install the wheel into a bare target dir, put it first on sys.path, compose the train config."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)
    code = ("import lnrl, os; assert lnrl.__file__.startswith(os.environ['PYTHONPATH']), lnrl.__file__; "
            "from lnrl.apps.train import main; main()")
    res = subprocess.run([sys.executable, "-c", code, "--cfg", "job", "model=tiny", "method=vft"],
                         cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(target)})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "source: tiny" in res.stdout and "lnrl.methods.SFTModule" in res.stdout


def test_console_entry_points_are_installed():
    bin_dir = Path(sys.executable).parent
    for name in ("lnrl-train", "lnrl-eval"):
        assert (bin_dir / name).is_file(), name


@pytest.mark.slow
def test_embedded_model_loads_from_cache_and_scores_text():
    """The real SmolLM2-135M-Instruct: cached safetensors reload in seconds and it prefers real text."""
    import torch

    from lnrl.models import load_model, load_tokenizer

    tok = load_tokenizer({"source": "embedded"})   # exports the cache on first use
    load_model({"source": "embedded"}, tok)
    model = load_model({"source": "embedded"}, tok)  # from the cache (a wall-clock bound would flake on a busy machine)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    good = tok("The cat sat on the mat.", return_tensors="pt").input_ids
    bad = tok("mat the on sat cat The.", return_tensors="pt").input_ids
    with torch.no_grad():
        nll = [model(input_ids=x, labels=x).loss.item() for x in (good, bad)]
    assert nll[0] < nll[1]
    assert all(not m.training or getattr(m, "p", 0) == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
