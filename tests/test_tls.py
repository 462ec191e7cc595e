"""TLS on every hop: the broker's 8883-style listener, client certificates, and the API over HTTPS.

Certificates come from ``campusmon.certs`` (what ``campusmon certs init|issue`` runs); servers
and clients are the real ones.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from campusmon.certs import init_all, issue
from campusmon.devices import DeviceRegistry
from campusmon.mqtt import MqttAuth, make_client
from campusmon.reading import Reading
from campusmon.services import Mosquitto, free_port, wait_port
from collectors.mqtt_collector import MqttCollector
from gateway.config import MqttSection
from gateway.outbox import Outbox
from gateway.publisher import Publisher
from tests.helpers import spawn_cli, stored, wait_until, write_config
from tests.test_security_mqtt import Probe


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    d = tmp_path / "certs"
    init_all(d)
    issue(d, "gw-cert", server=False)
    return d


def _broker(tmp_path: Path, certs: Path, require_certificate: bool = False) -> Mosquitto:
    return Mosquitto(tmp_path / "mq", free_port(), tls_port=free_port(), certs_dir=certs,
                     require_certificate=require_certificate)  # fmt: skip


@pytest.fixture
def tls_broker(tmp_path: Path, certs: Path) -> Iterator[tuple[Mosquitto, DeviceRegistry]]:
    srv = _broker(tmp_path, certs)
    srv.start()
    yield srv, DeviceRegistry(srv.data_dir)
    srv.stop()


def _add(srv: Mosquitto, reg: DeviceRegistry, name: str, kind: str) -> MqttAuth:
    pw = reg.add(name, kind)
    assert srv.reload()
    return MqttAuth(name, pw)


def test_collector_and_gateway_carry_readings_over_tls_with_the_projects_ca(
    tls_broker, certs, influxdb, make_config, tmp_path
) -> None:
    srv, reg = tls_broker
    assert srv.tls_port is not None
    col = _add(srv, reg, "collector-tls", "collector")
    gw = _add(srv, reg, "gw-tls", "gateway")
    ca = str(certs / "ca.crt")
    data = {
        "buildings": [{"id": "b1"}],
        "gateways": [{"id": "gw-tls", "building": "b1"}],
        "meters": [{"id": "e-1", "building": "b1", "kind": "electricity", "gateway": "gw-tls"}],
    }
    cfg = make_config(influx=influxdb, data=data, mqtt={
        "port": srv.tls_port, "tls": True, "ca_certs": ca, "client_id": "collector-tls",
        "username": col.username, "password": col.password})  # fmt: skip
    collector = MqttCollector(cfg).start()
    ob = Outbox(tmp_path / "outbox.sqlite")
    pub = None
    try:
        collector.store.ensure_database()
        assert collector.wait_connected(10) and collector.subscribed.wait(10)
        ts = int(time.time()) // 60 * 60 - 300
        assert ob.put([Reading("e-1", "energy_kwh", 12.5, ts)])
        mq = MqttSection(port=srv.tls_port, tls=True, ca_certs=ca, username=gw.username, password=gw.password)
        pub = Publisher(mq, "gw-tls", "gw-tls", ob, lambda: {})
        pub.start()
        wait_until(lambda: stored(collector.store, ("energy_kwh",)), 30, 0.2, "the gateway's reading stored")
        assert stored(collector.store, ("energy_kwh",)) == {("e-1", "energy_kwh", ts): 12.5}
        assert pub.connected
    finally:
        if pub is not None:
            pub.stop(2)
        collector.stop()
        ob.close()


def _handshake_error(port: int, auth: MqttAuth) -> Exception | None:
    c = make_client("x", auth)
    try:
        c.connect("127.0.0.1", port)
    except (ssl.SSLError, OSError) as e:
        return e
    finally:
        c.disconnect()
    return None


def _accepted(port: int, auth: MqttAuth) -> bool:
    """True only if the broker sent a successful CONNACK."""
    try:
        p = Probe(port, auth)
    except (ssl.SSLError, OSError):
        return False
    try:
        wait_until(lambda: p.connack.is_set() or p.gone.is_set(), 10, 0.05, "CONNACK or a dropped link")
        return p.accepted
    finally:
        p.close()


def test_a_client_that_does_not_trust_the_ca_fails_the_handshake(tls_broker, tmp_path) -> None:
    srv, reg = tls_broker
    me = _add(srv, reg, "m-1", "meter")
    other_ca = tmp_path / "other"
    init_all(other_ca)
    for ca in (None, str(other_ca / "ca.crt")):  # the system's CAs, and some other private CA
        err = _handshake_error(srv.tls_port, MqttAuth(me.username, me.password, tls=True, ca_certs=ca))
        assert isinstance(err, ssl.SSLCertVerificationError), err


def test_require_certificate_refuses_no_cert_and_takes_the_identity_from_it(tmp_path, certs) -> None:
    srv = _broker(tmp_path, certs, require_certificate=True)
    reg = DeviceRegistry(srv.data_dir)
    srv.start()
    try:
        col = _add(srv, reg, "collector-x", "collector")
        _add(srv, reg, "gw-cert", "gateway")  # the ACL block for the certificate's CN
        ca = str(certs / "ca.crt")
        # A password alone is not enough on this listener (TLS 1.3 asks for the certificate after
        # the handshake, so the refusal may come as a dropped connection instead of an error).
        assert not _accepted(srv.tls_port, MqttAuth(col.username, col.password, tls=True, ca_certs=ca))
        reader = Probe(srv.port, col)  # the collector on the loopback listener
        reader.wait_connack()
        reader.subscribe("campus/v1/gateways/#")
        cert = MqttAuth(tls=True, ca_certs=ca, certfile=str(certs / "gw-cert.crt"),
                        keyfile=str(certs / "gw-cert.key"))  # fmt: skip
        gw = Probe(srv.tls_port, cert)
        again = None
        try:
            gw.wait_connack()
            assert gw.accepted, gw.reason
            # Its CN is its user name: another gateway's topic is refused (Mosquitto 2.0.11 answers
            # PUBACK "Not authorized", then closes the connection), its own is delivered.
            info = gw.c.publish("campus/v1/gateways/gw-other/readings", b"forged", qos=1)
            assert gw.gone.wait(10)
            assert info.is_published()  # acknowledged, so routed (or not) before the link closed
            again = Probe(srv.tls_port, cert)
            again.wait_connack()
            again.c.publish("campus/v1/gateways/gw-cert/readings", b"mine", qos=1).wait_for_publish(10)
            assert reader.wait_payloads(1) == [b"mine"]
        finally:
            gw.close()
            if again is not None:
                again.close()
            reader.close()
    finally:
        srv.stop()


def test_the_api_over_https_answers_with_the_issued_certificate(
    certs, mosquitto, influxdb, make_config, tmp_path
) -> None:
    port = free_port()
    cfg = make_config(mosquitto, influxdb, api={"port": port})
    path = write_config(cfg, tmp_path / "campus.yaml")
    proc = spawn_cli(
        [
            "api",
            "-c",
            str(path),
            "--ssl-certfile",
            str(certs / "api.crt"),
            "--ssl-keyfile",
            str(certs / "api.key"),
        ],
        tmp_path / "api.log",
    )
    try:
        wait_port(port, 60, proc)  # type: ignore[arg-type]
        ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        r = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=ctx, timeout=10)
        assert r.status_code == 200
        served = x509.load_pem_x509_certificate(ssl.get_server_certificate(("127.0.0.1", port)).encode())
        assert served == x509.load_pem_x509_certificate((certs / "api.crt").read_bytes())
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the CA
            httpx.get(f"https://127.0.0.1:{port}/healthz", timeout=10)
    finally:
        proc.terminate()
        proc.wait(20)


def test_certs_cli_makes_a_ca_and_certificates_it_signs(tmp_path) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPUSMON_")}
    env["PYTHONPATH"] = str(ROOT)
    d = tmp_path / "pki"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [
            sys.executable,
            "-m",
            "campusmon.cli",
            "certs",
            *args,
            "-c",
            "deploy/campus.yaml",
            "--certs-dir",
            str(d),
        ]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    assert cli("init", "--host", "broker.campus.example", "--host", "10.0.0.5").returncode == 0
    assert cli("init").returncode == 1  # an existing CA is not replaced by accident
    assert cli("issue", "gw-7").returncode == 0
    assert oct((d / "ca.key").stat().st_mode & 0o777) == "0o600"
    broker = x509.load_pem_x509_certificate((d / "broker.crt").read_bytes())
    sans = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "broker.campus.example" in sans.get_values_for_type(x509.DNSName)
    gw = x509.load_pem_x509_certificate((d / "gw-7.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    gw.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    assert gw.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "gw-7"
