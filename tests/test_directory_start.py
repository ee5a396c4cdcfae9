"""``twistd recsync-directory`` refuses a configuration it cannot use with one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bridge.testing.harness import child_env

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def _start(tmp_path: Path, conf: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "recceiver.conf"
    path.write_text(conf)
    command = [*TWISTD, "-n", "--pidfile=", "recsync-directory", "-f", str(path)]
    return subprocess.run(
        command, capture_output=True, text=True, env=child_env(), timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("conf", "expected"),
    [
        ("[http]\nbind = nowhere:port\n", "recsync-directory: [http] bind"),
        (
            "[etcd]\ndata_dir = {tmp}/none\n",
            "recsync-directory: no [etcd] endpoints configured and no embedded etcd found in",
        ),
    ],
)
def test_a_directory_that_cannot_start_says_why_in_one_line(
    tmp_path: Path, conf: str, expected: str
) -> None:
    done = _start(tmp_path, conf.format(tmp=tmp_path))
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(expected), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
