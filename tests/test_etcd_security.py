"""Who may write to etcd: TLS (server CA, client certificate) and user/password auth.

The tests start their own etcd member that serves clients over TLS only, demands a
client certificate signed by the test CA, and has authentication enabled: a user
``bridge`` whose role may read and write under ``/sec`` only. Certificates come from
trustme; users are created with etcdctl. The member forgets unused tokens after
`TOKEN_TTL` seconds, so re-authentication is exercised too.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from bridge.config import EtcdConfig, load_config
from bridge.errors import ConfigError
from bridge.etcd.client import AuthenticatedClient, call_with_retry, make_client
from bridge.etcd.monitor import EtcdMonitor
from bridge.etcd.process import etcd_environment, find_etcd_binary, free_ports
from bridge.testing.cluster import EtcdMember
from bridge.testing.fakeioc import FakeIOC, make_ioc
from bridge.testing.harness import BridgeProcess, child_env
from tests.helpers import poll

pytestmark = pytest.mark.etcd

TOKEN_TTL = 2
USER = "bridge"


@dataclass
class SecureEtcd:
    endpoint: str
    files: dict[str, str]  # ca, cert, key, other_ca, other_cert, other_key
    password: str
    root_password: str
    member: EtcdMember

    def settings(self, **changes: Any) -> dict[str, Any]:
        """[etcd] settings for a bridge that is allowed in."""
        base = {
            "ca": self.files["ca"],
            "cert": self.files["cert"],
            "key": self.files["key"],
            "username": USER,
            "password": self.password,
        }
        base.update(changes)
        return {key: value for key, value in base.items() if value is not None}

    def client(self) -> Any:
        return make_client([self.endpoint], timeout=2.0, **self.settings())


def _certificates(directory: Path) -> dict[str, str]:
    trustme = pytest.importorskip("trustme")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    # The CN is no etcd user, so the certificate alone never authenticates anyone.
    client = ca.issue_cert("recsync-client@test", common_name="recsync-client")
    stranger = other.issue_cert("stranger@test", common_name=USER)
    files = {
        "ca": ca.cert_pem,
        "server": server.cert_chain_pems[0],
        "server_key": server.private_key_pem,
        "cert": client.cert_chain_pems[0],
        "key": client.private_key_pem,
        "other_ca": other.cert_pem,
        "other_cert": stranger.cert_chain_pems[0],
        "other_key": stranger.private_key_pem,
    }
    paths = {}
    for name, blob in files.items():
        path = directory / f"{name}.pem"
        blob.write_to_path(str(path))
        paths[name] = str(path)
    return paths


def _etcdctl(endpoint: str, files: dict[str, str], *args: str) -> None:
    binary = shutil.which("etcdctl")
    if binary is None:
        pytest.skip("etcdctl not found (Debian package etcd-client)")
    command = [
        binary,
        "--endpoints",
        endpoint,
        "--cacert",
        files["ca"],
        "--cert",
        files["cert"],
        "--key",
        files["key"],
        *args,
    ]
    env = {**etcd_environment(), "ETCDCTL_API": "3"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, (args[:2], result.stdout, result.stderr)


@pytest.fixture(scope="module")
def secure_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureEtcd]:
    try:
        binary = find_etcd_binary()
    except ConfigError as exc:
        pytest.skip(str(exc))
    base = tmp_path_factory.mktemp("secure-etcd")
    files = _certificates(base)
    client_port, peer_port, metrics_port = free_ports(3)
    member = EtcdMember(
        binary,
        "s1",
        base / "s1",
        client_port,
        peer_port,
        f"s1=http://127.0.0.1:{peer_port}",
        f"sec-{uuid.uuid4().hex}",
        client_scheme="https",
        health_port=metrics_port,
        extra_flags=(
            "--cert-file",
            files["server"],
            "--key-file",
            files["server_key"],
            "--trusted-ca-file",
            files["ca"],
            "--client-cert-auth",
            "--listen-metrics-urls",
            f"http://127.0.0.1:{metrics_port}",
            "--auth-token-ttl",
            str(TOKEN_TTL),
            "--bcrypt-cost",
            "4",
        ),
    )
    member.start()
    try:
        member.wait_healthy(30)
        endpoint = member.endpoint
        password, root_password = secrets.token_hex(12), secrets.token_hex(12)
        _etcdctl(endpoint, files, "user", "add", f"root:{root_password}", "--interactive=false")
        _etcdctl(endpoint, files, "role", "add", "recsync")
        _etcdctl(
            endpoint,
            files,
            "role",
            "grant-permission",
            "recsync",
            "--prefix=true",
            "readwrite",
            "/sec",
        )
        _etcdctl(endpoint, files, "user", "add", f"{USER}:{password}", "--interactive=false")
        _etcdctl(endpoint, files, "user", "grant-role", USER, "recsync")
        _etcdctl(endpoint, files, "auth", "enable")
        yield SecureEtcd(endpoint, files, password, root_password, member)
    finally:
        member.terminate()
        assert not member.is_running()


@pytest.fixture
def sec_prefix() -> str:
    return f"/sec/{uuid.uuid4().hex[:12]}"


def _get(client: Any, key: str) -> Any:
    value, _ = call_with_retry(lambda: client.get(key), deadline_s=10.0)
    return None if value is None else json.loads(value)


# -- the client ------------------------------------------------------------------------------


def test_client_with_tls_and_password_reads_and_writes_its_prefix(
    secure_etcd: SecureEtcd, sec_prefix: str
) -> None:
    client = secure_etcd.client()
    try:
        assert isinstance(client, AuthenticatedClient)
        call_with_retry(lambda: client.put(sec_prefix + "/x", b"1"), deadline_s=10.0)
        assert _get(client, sec_prefix + "/x") == 1
        # Outside the role's prefix etcd says no, whatever the client wants.
        with pytest.raises(Exception, match="permission denied"):
            call_with_retry(lambda: client.put("/elsewhere", b"1"), deadline_s=10.0)
    finally:
        client.close()


def test_a_forgotten_token_is_renewed_and_the_call_retried(
    secure_etcd: SecureEtcd, sec_prefix: str
) -> None:
    client = secure_etcd.client()
    try:
        call_with_retry(lambda: client.put(sec_prefix + "/t", b"1"), deadline_s=10.0)
        time.sleep(TOKEN_TTL + 1.5)  # unused that long, etcd forgets the token
        call_with_retry(lambda: client.put(sec_prefix + "/t", b"2"), deadline_s=10.0)
        lease = call_with_retry(lambda: client.lease(5), deadline_s=10.0)
        assert lease.id
        assert _get(client, sec_prefix + "/t") == 2
        assert client.renewals >= 1
    finally:
        client.close()


def test_a_wrong_password_is_one_clear_config_error(secure_etcd: SecureEtcd) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        make_client(
            [secure_etcd.endpoint],
            timeout=2.0,
            **secure_etcd.settings(password="not-" + secure_etcd.password),
        )
    assert time.monotonic() - started < 5.0  # not retried: it will not get better
    message = str(caught.value)
    assert "authentication as 'bridge' refused" in message
    assert secure_etcd.password not in message


@pytest.mark.parametrize("who", ["with-password", "certificate-only"])
def test_an_untrusted_server_certificate_is_one_clear_config_error(
    secure_etcd: SecureEtcd, who: str
) -> None:
    settings = secure_etcd.settings(ca=secure_etcd.files["other_ca"])
    if who == "certificate-only":
        settings = {k: v for k, v in settings.items() if k not in ("username", "password")}
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"server certificate is not trusted.*\[etcd\] ca"):
        make_client([secure_etcd.endpoint], timeout=2.0, **settings)
    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize("cert", ["none", "other-ca"])
def test_a_refused_client_certificate_is_one_clear_config_error(
    secure_etcd: SecureEtcd, cert: str
) -> None:
    files = secure_etcd.files
    changes = (
        {"cert": None, "key": None}
        if cert == "none"
        else {"cert": files["other_cert"], "key": files["other_key"]}
    )
    with pytest.raises(ConfigError, match=r"client certificate.*\[etcd\] cert and key"):
        make_client([secure_etcd.endpoint], timeout=2.0, **secure_etcd.settings(**changes))


# -- the bridge ------------------------------------------------------------------------------


def _bridge(tmp_path: Path, secure_etcd: SecureEtcd, prefix: str, **etcd: Any) -> BridgeProcess:
    return BridgeProcess(
        tmp_path,
        endpoints=[secure_etcd.endpoint],
        prefix=prefix,
        etcd=secure_etcd.settings(**etcd),
        recceiver={"tcptimeout": 2.0},
    )


def test_bridge_over_tls_with_auth_stores_uploads_and_never_logs_the_password(
    tmp_path: Path, secure_etcd: SecureEtcd, sec_prefix: str
) -> None:
    process = _bridge(tmp_path, secure_etcd, sec_prefix)
    client = secure_etcd.client()
    iocs: list[FakeIOC] = []
    try:
        process.start().wait_ready()
        for name, pause in (("SEC1", TOKEN_TTL + 1.5), ("SEC2", 0.0)):
            ioc = FakeIOC(make_ioc(name, 25, hostname="sechost"))
            iocs.append(ioc)
            ioc.connect("127.0.0.1", process.port)
            key = f"{sec_prefix}/iocs/sechost:{name}"
            doc = poll(
                lambda key=key: (
                    (_get(client, key) or {}).get("status") == "active" and _get(client, key)
                ),
                what=f"{name} active",
            )
            assert doc["records"] == 25
            records = call_with_retry(
                lambda name=name: list(client.get_prefix(f"{sec_prefix}/records/sechost:{name}/")),
                deadline_s=10.0,
            )
            assert len(records) == 25
            time.sleep(pause)  # the bridge idles: etcd forgets its token; SEC2 still lands
    finally:
        for ioc in iocs:
            ioc.close()
        process.stop()
        client.close()
    log = process.log_text()
    assert secure_etcd.password not in log
    assert "Traceback" not in log


@pytest.mark.parametrize(
    "problem, changes, words",
    [
        ("password", {"password": "wrong-password-123"}, ["authentication as 'bridge' refused"]),
        ("ca", {"ca": "other_ca"}, ["server certificate is not trusted", "[etcd] ca"]),
        ("cert", {"cert": "other_cert", "key": "other_key"}, ["[etcd] cert and key"]),
        ("no cert", {"cert": None, "key": None}, ["client certificate", "[etcd] cert and key"]),
        (
            "plaintext",
            {"ca": None, "cert": None, "key": None, "endpoints": "http://{endpoint}"},
            ["speaks TLS", "https://host:port", "[etcd] ca"],
        ),
        (
            "no user",
            {"username": None, "password": None},
            ["refuses a client without a user name", "set [etcd] username and password"],
        ),
        (
            "plaintext, no user",
            {
                **dict.fromkeys(("ca", "cert", "key", "username", "password")),
                "endpoints": "{endpoint}",
            },
            ["speaks TLS", "https://host:port", "[etcd] ca"],
        ),
    ],
)
def test_bridge_with_bad_credentials_exits_1_with_one_clear_line(
    tmp_path: Path,
    secure_etcd: SecureEtcd,
    sec_prefix: str,
    problem: str,
    changes: dict[str, str | None],
    words: list[str],
) -> None:
    resolved = {k: None if v is None else secure_etcd.files.get(v, v) for k, v in changes.items()}
    endpoint = secure_etcd.endpoint.removeprefix("https://")
    endpoints = str(resolved.pop("endpoints", secure_etcd.endpoint)).format(endpoint=endpoint)
    process = BridgeProcess(
        tmp_path,
        endpoints=[endpoints],
        prefix=sec_prefix,
        etcd=secure_etcd.settings(**resolved),
    )
    process.start()
    try:
        assert process.wait(60) == 1
    finally:
        process.stop()
    log = process.log_text()
    failed = [line for line in log.splitlines() if "could not start" in line]
    assert len(failed) == 1, log
    for word in words:
        assert word in failed[0], failed[0]
    assert "Traceback" not in log and "Unhandled error" not in log, log
    assert secure_etcd.password not in log and "wrong-password-123" not in log
    assert "listening on TCP port" not in log  # it never announced itself


def test_bridge_whose_role_does_not_cover_the_prefix_exits_1_naming_user_and_prefix(
    tmp_path: Path, secure_etcd: SecureEtcd
) -> None:
    """etcd refuses the start-up probe: that is no outage, so the bridge does not retry."""
    process = _bridge(tmp_path, secure_etcd, "/elsewhere")
    process.start()
    try:
        assert process.wait(30) == 1
    finally:
        process.stop()
    log = process.log_text()
    failed = [line for line in log.splitlines() if "could not start" in line]
    assert len(failed) == 1, log
    assert failed[0].split("could not start: ", 1)[1] == (
        "etcd user 'bridge' may not read and write under /elsewhere (etcd: permission "
        "denied): grant its role readwrite on the prefix (etcdctl role grant-permission "
        "ROLE --prefix=true readwrite /elsewhere)"
    )
    assert "Traceback" not in log and "still trying" not in log, log


def test_help_and_config_errors_never_show_credentials(tmp_path: Path) -> None:
    secret = "s3cr3t-" + secrets.token_hex(8)
    config = tmp_path / "bridge.conf"
    config.write_text(
        "[etcd]\nendpoints = https://127.0.0.1:1\nusername = u\n"
        f"password = {secret}\nlease_ttl = oops\n"
    )
    env = {**child_env(), "RECCEIVER_ETCD_PASSWORD": secret}
    twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    for args in (["recsync-bridge", "--help"], ["recsync-bridge", "-f", str(config)]):
        result = subprocess.run(
            [*twistd, "-n", "--pidfile=", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )
        output = result.stdout + result.stderr
        assert secret not in output, args
        assert "recsync-bridge" in output or "lease_ttl" in output, output
    with pytest.raises(ConfigError) as caught:
        load_config(str(config), {"RECCEIVER_ETCD_PASSWORD": secret})
    assert secret not in str(caught.value) and "lease_ttl" in str(caught.value)
    assert secret not in repr(EtcdConfig(username="u", password=secret))


def test_the_bridge_user_may_read_etcd_status_and_alarms(
    secure_etcd: SecureEtcd, sec_prefix: str
) -> None:
    """The bridge's etcd monitor (bridge.etcd.monitor) reads etcd's alarms as the bridge's
    own user, whose role covers only its prefix."""
    cfg = load_config(None, {}).etcd
    settings = secure_etcd.settings()
    monitor_config = dataclasses.replace(
        cfg, endpoints=(secure_etcd.endpoint,), prefix=sec_prefix, **settings
    )
    monitor = EtcdMonitor(
        monitor_config, [secure_etcd.endpoint], f"{sec_prefix}/bridges/b", Clock()
    )
    monitor.check()
    assert monitor.store is not None
    try:
        status = monitor.store.status()
        assert status.errors == ()
    finally:
        monitor.store.close()
