"""The protocol core (`bridge.protocol`) is sans-I/O: no Twisted, sockets, clocks or
randomness, so it can be read, tested and reused without a reactor."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import bridge.protocol

#: Top-level modules the protocol package must not import, directly or through others.
FORBIDDEN = (
    "twisted",
    "socket",
    "time",
    "random",
    "selectors",
    "asyncio",
    "threading",
    "pyetcd",
    "grpc",
)
PACKAGE = Path(bridge.protocol.__file__).parent
MODULES = sorted(f"bridge.protocol.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def test_the_package_holds_the_codec_the_runs_the_session_and_the_contract() -> None:
    assert MODULES == [
        "bridge.protocol.effects",
        "bridge.protocol.names",
        "bridge.protocol.runs",
        "bridge.protocol.session",
        "bridge.protocol.wire",
    ]


def test_importing_the_protocol_package_loads_no_io_module() -> None:
    # In a fresh interpreter. Python itself loads `time` at start-up, so what counts is
    # what importing the package adds; the static test below covers `time`.
    code = (
        "import importlib, sys\n"
        "before = set(sys.modules)\n"
        f"for name in {MODULES!r}: importlib.import_module(name)\n"
        "added = set(sys.modules) - before\n"
        f"bad = sorted(m for m in added if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_module_of_the_protocol_package_imports_an_io_module() -> None:
    imported: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        imported[path.name] = names
    assert imported["wire.py"]  # the scan sees imports at all
    bad = {name: sorted(names & set(FORBIDDEN)) for name, names in imported.items()}
    assert not any(bad.values()), bad
