"""The repository's rooms keep to themselves: what imports what."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bridge
from bridge.testing import harness

#: Everything the product runs: the twistd plugin's service, the command, the processors.
PRODUCT_MODULES = [
    "bridge.service",
    "bridge.tap",
    "bridge.cli",
    "bridge.processors.etcd",
    "bridge.processors.show",
    "bridge.etcd.embedded",
]


def test_product_code_never_imports_test_support() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {PRODUCT_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.startswith('bridge.testing'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_only_the_etcd_layer_imports_the_etcd_client_library() -> None:
    """`bridge/etcd/` is the one package that imports pyetcd or grpc (statically: every
    import statement of every module, wherever it is, function bodies included)."""
    root = Path(bridge.__file__).resolve().parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path.is_relative_to(root / "etcd"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            offenders += [
                f"{path.relative_to(root.parent)}:{node.lineno} imports {name}"
                for name in names
                if name.split(".")[0] in ("pyetcd", "grpc")
            ]
    assert not offenders, "\n".join(offenders)
    assert (root / "etcd" / "client.py").is_file()  # the walk saw the real tree


def test_the_harness_adds_the_checkout_to_pythonpath_only_from_a_checkout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = harness.checkout_root()
    assert root is not None and (root / "twisted" / "plugins").is_dir()  # we run from one
    env = harness.child_env({"PYTHONPATH": "/elsewhere"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(root), "/elsewhere"]
    monkeypatch.setattr(harness, "checkout_root", lambda: None)  # as installed
    assert harness.child_env({"PYTHONPATH": "/elsewhere"}) == {"PYTHONPATH": "/elsewhere"}
    assert "PYTHONPATH" not in harness.child_env({})
