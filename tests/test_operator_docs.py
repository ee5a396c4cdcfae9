"""What the README and the example files promise an operator, checked against the code."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bridge.config import example_config, load_config

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
UNIT = REPO / "demo" / "systemd" / "recsync-bridge.service"
#: Tools for tests, linting and fuzzing: never needed to run the bridge.
TEST_TOOLS = {"pytest", "hypothesis", "mypy", "mypy-zope", "ruff", "atheris", "trustme", "psutil"}


def section(title: str) -> str:
    """The README text under ``## title`` up to the next ``## `` heading."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end >= 0 else None]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def test_the_readme_configuration_block_is_the_example_file(tmp_path: Path) -> None:
    (block,) = code_blocks(section("Configuration"), "ini")
    assert block == example_config()
    path = tmp_path / "pasted.conf"
    path.write_text(block, encoding="utf-8")
    assert load_config(str(path), {"HOME": "/h"}) == load_config(None, {"HOME": "/h"})


def test_the_quick_start_installs_no_test_tools() -> None:
    first = code_blocks(section("Quick start"), "sh")[0].splitlines()[0]
    assert first.startswith("bash .ci/install --runtime && ")
    install = (REPO / ".ci" / "install").read_text(encoding="utf-8")
    runtime = install[install.index('if [ "$RUNTIME" -eq 1 ]; then') :]
    runtime = runtime[: runtime.index("fi")]
    assert "pip install ." in runtime and "[test]" not in runtime and "exit 0" in runtime


def test_running_the_bridge_needs_no_test_tools() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = {re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    assert not names & TEST_TOOLS
    assert {"pytest", "mypy", "ruff"} <= {
        re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0].lower()
        for d in project["optional-dependencies"]["test"]
    }
    ci_install = (REPO / ".ci" / "install").read_text(encoding="utf-8")
    assert "'.[test]'" in ci_install


def test_the_systemd_unit_runs_the_bridge_in_the_foreground_with_readiness() -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text(encoding="utf-8"))
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["KillMode"] == "mixed"  # SIGTERM to the bridge, not to its etcd
    command = service["ExecStart"].split()
    assert command[0].endswith("/twistd") and "--nodaemon" in command
    assert "--pidfile=" in command and "recsync-bridge" in command
    assert service["Restart"] == "on-failure"
    assert "demo/systemd/recsync-bridge.service" in README


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    twistd = str(Path(sys.executable).parent / "twistd")
    text = UNIT.read_text(encoding="utf-8").replace("/opt/recsync-bridge/.venv/bin/twistd", twistd)
    unit = tmp_path / "recsync-bridge.service"
    unit.write_text(text, encoding="utf-8")
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_the_readme_names_every_start_failure_line() -> None:
    """The README's table of start-up failures has the texts the code prints."""
    running = section("Running it")
    for words in (
        "cannot listen on TCP",
        "is in use by another bridge (PID",
        "etcd binary not found",
        "did not answer within",
        "speaks TLS",
        "may not read and write under",
        "authentication as",
        "server certificate is not trusted",
    ):
        assert words in running, words
