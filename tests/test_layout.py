"""The repository's rooms keep to themselves: what imports what."""

from __future__ import annotations

import subprocess
import sys

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
