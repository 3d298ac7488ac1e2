"""The package's layering: library modules never import the command-line apps (lnrl.apps), and every
console script is an app."""

from __future__ import annotations

import ast
import importlib
import tomllib
from pathlib import Path

import lnrl

PACKAGE = Path(lnrl.__file__).resolve().parent
ROOT = PACKAGE.parent
ALLOWED: set[str] = set()  # library modules allowed to import an app: none


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Every module an `import` / `from ... import` statement names, relative imports resolved.
    `from a import b` counts as a.b too (b may be a submodule)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def imports_apps(source: str, module: str = "lnrl.x", is_package: bool = False) -> bool:
    return any(m == "lnrl.apps" or m.startswith("lnrl.apps.")
               for m in imported_modules(source, module, is_package))


def test_the_check_sees_every_import_form():
    for bad in ("import lnrl.apps.train", "from lnrl.apps import CONF", "from lnrl import apps",
                "from lnrl.apps.evaluate import evaluate", "def f():\n    from lnrl.apps.train import train"):
        assert imports_apps(bad), bad
    assert imports_apps("from .apps import train", "lnrl.callbacks")
    assert imports_apps("from ..apps import train", "lnrl.data.datamodule")
    assert not imports_apps("from lnrl.apparatus import x\nimport lnrl.evaluation")


def test_no_library_module_imports_an_app():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        if name == "lnrl.apps" or name.startswith("lnrl.apps.") or name in ALLOWED:
            continue
        if imports_apps(path.read_text(encoding="utf-8"), name, path.name == "__init__.py"):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"library modules importing lnrl.apps (move the code they need into the library): {offenders}"


def test_console_scripts_are_apps_with_a_main():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"lnrl-train", "lnrl-eval", "lnrl-refscores", "lnrl-report", "lnrl-export",
                            "lnrl-sample", "lnrl-prefs", "lnrl-pipeline"}
    for name, target in scripts.items():
        module, func = target.split(":")
        assert module.startswith("lnrl.apps."), (name, target)
        assert callable(getattr(importlib.import_module(module), func)), (name, target)
