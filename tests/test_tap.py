"""bridge.tap and the twistd plugin: option parsing, errors, discoverability."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.application.service import IService

from bridge.config import BridgeConfig
from bridge.tap import Options, makeService
from bridge.testing.harness import child_env

REPO = Path(__file__).resolve().parent.parent
SECRET = "hunter2-tap-secret"


def write_conf(tmp_path: Path, text: str) -> str:
    path = tmp_path / "recceiver.conf"
    path.write_text(text, encoding="utf-8")
    return str(path)


def parse(*argv: str) -> Options:
    options = Options()  # type: ignore[no-untyped-call]
    options.parseOptions(list(argv))  # type: ignore[no-untyped-call]
    return options


def twistd(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run twistd in a subprocess the way an operator would, with the checkout on the path."""
    env = child_env()
    return subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_options_load_the_config_file(tmp_path: Path) -> None:
    options = parse("-f", write_conf(tmp_path, "[recceiver]\nmaxActive = 4\n"))
    assert isinstance(options["cfg"], BridgeConfig)
    assert options["cfg"].max_active == 4


def test_options_without_file_use_defaults() -> None:
    assert parse()["cfg"].procs == ("etcd",)


def test_long_option_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECCEIVER_RECCEIVER_MAXACTIVE", "9")
    options = parse("--config", write_conf(tmp_path, "[recceiver]\nmaxActive = 4\n"))
    assert options["cfg"].max_active == 9


def test_command_line_overrides_beat_file_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECCEIVER_ETCD_ENDPOINTS", "env-etcd:2379")
    path = write_conf(tmp_path, "[recceiver]\nbind = :1\n[etcd]\nendpoints = file-etcd:2379\n")
    cfg = parse("-f", path, "--bind", "127.0.0.1:5050", "--etcd-endpoints", "a:1,b:2")["cfg"]
    assert (cfg.bind_host, cfg.bind_port) == ("127.0.0.1", 5050)
    assert cfg.etcd.endpoints == ("a:1", "b:2")


def test_empty_etcd_endpoints_option_selects_embedded(tmp_path: Path) -> None:
    path = write_conf(tmp_path, "[etcd]\nendpoints = e:2379\n")
    assert parse("-f", path, "--etcd-endpoints", "")["cfg"].etcd.embedded


def test_bad_value_ends_the_program_with_one_line_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"^recsync-bridge: \[recceiver\] maxActive = '0'"):
        parse("-f", write_conf(tmp_path, "[recceiver]\nmaxActive = 0\n"))


def test_bad_override_ends_the_program() -> None:
    with pytest.raises(SystemExit, match=r"\[recceiver\] bind"):
        parse("--bind", "1.2.3.4:70000")


def test_missing_file_ends_the_program(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.conf")
    with pytest.raises(SystemExit, match="does not exist"):
        parse("-f", missing)


def test_config_error_has_no_cause_chain(tmp_path: Path) -> None:
    """Only the message is shown; the ConfigError must not ride along as context."""
    with pytest.raises(SystemExit) as info:
        parse("-f", write_conf(tmp_path, "[etcd]\nprefix = x\n"))
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_password_not_shown_in_help_or_options(tmp_path: Path) -> None:
    path = write_conf(tmp_path, f"[etcd]\nendpoints = e:1\nusername = u\npassword = {SECRET}\n")
    options = parse("-f", path)
    assert options["cfg"].etcd.password == SECRET
    assert SECRET not in str(options)
    assert SECRET not in repr(options)


def test_make_service_returns_bridge_service(tmp_path: Path) -> None:
    options = parse("-f", write_conf(tmp_path, "[recceiver]\nprocs = show\n"))
    service = makeService(options)
    assert IService.providedBy(service)
    assert getattr(service, "config", None) is options["cfg"]
    assert not service.running


def test_importing_tap_does_not_install_a_reactor() -> None:
    """twistd imports bridge.tap before it installs the reactor named by --reactor."""
    code = (
        "import sys, bridge.tap, bridge.config; "
        "sys.exit(1 if 'twisted.internet.reactor' in sys.modules else 0)"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env).returncode == 0


def test_plugin_directory_has_no_init_files() -> None:
    """An __init__.py here would hide the plugin from Twisted (style.md (c)1)."""
    assert not (REPO / "twisted" / "__init__.py").exists()
    assert not (REPO / "twisted" / "plugins" / "__init__.py").exists()


def test_twistd_lists_the_plugin() -> None:
    result = twistd("--help")
    assert result.returncode == 0, result.stderr
    assert "recsync-bridge" in result.stdout
    assert "Traceback" not in result.stderr


def test_twistd_plugin_help_shows_config_option() -> None:
    result = twistd("recsync-bridge", "--help")
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout
    assert "--etcd-endpoints" in result.stdout


def test_twistd_reports_bad_config_in_one_line(tmp_path: Path) -> None:
    path = write_conf(tmp_path, f"[recceiver]\nmaxActive = lots\n[etcd]\npassword = {SECRET}\n")
    result = twistd("-n", "--pidfile=", "recsync-bridge", "-f", path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"recsync-bridge: [recceiver] maxActive = 'lots' (from {path}): must be a whole "
        "number >= 1"
    ]


def test_version_is_the_bridges() -> None:
    import bridge

    result = twistd("recsync-bridge", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"recsync-bridge {bridge.__version__} (Twisted ")


def test_print_config_shows_values_and_sources_with_secrets_masked(tmp_path: Path) -> None:
    path = write_conf(
        tmp_path, f"[etcd]\nendpoints = e:1\nusername = u\npassword = {SECRET}\nendpont = x\n"
    )
    result = twistd("recsync-bridge", "-f", path, "--bind", ":7", "--print-config")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[lines.index("bind = :7") - 1] == "# from command line"
    assert lines[lines.index("endpoints = e:1") - 1] == f"# from {path}"
    assert lines[lines.index("password = ********") - 1] == f"# from {path}"
    assert lines[lines.index("maxActive = 20") - 1] == "# default"
    assert any("endpont" in line and "did you mean endpoints?" in line for line in lines)
    assert SECRET not in result.stdout + result.stderr
