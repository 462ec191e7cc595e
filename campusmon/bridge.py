"""Campus brokers joined to a central broker by Mosquitto bridges: ``campusmon bridge config``.

Each campus runs its own Mosquitto, which its meters and gateways publish to as usual. A bridge
section in that broker's configuration forwards ``campus/v1/meters/…`` and
``campus/v1/gateways/…`` to the central broker under the campus prefix, so a reading published on
``campus/v1/meters/X/readings`` at campus ``east`` arrives centrally on
``east/campus/v1/meters/X/readings``. The central collectors subscribe to both forms
(``campusmon.wire.READING_SUBSCRIPTIONS``) and parse them alike; the prefix says which campus
broker a reading came through, and the central broker's ACL lets the bridge identity ``east``
publish only under ``east/…`` (``campusmon.devices``, kind ``bridge``).

Nothing is lost while the link is down because the bridge keeps a persistent session on both
sides (``cleansession false``, ``local_cleansession false``), the campus broker queues without a
cap (``max_queued_messages 0``) and persists its queue (``persistence true`` with a 1 s autosave,
written by :class:`campusmon.services.Mosquitto`). A message sent twice is stored once: a reading
is keyed by (meter, quantity, ts) in InfluxDB. The file also lifts the campus broker's cap on
messages in flight (``max_inflight_messages 0``): with the cap, Mosquitto 2.0.11 leaves a block of
queued readings unsent after failed reconnect attempts (docs/deployment.md, "Campuses joined by
bridges").
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from campusmon.mqtt import CLIENT_ID_PREFIX
from campusmon.wire import TOPIC_ROOT

# The subtrees a campus forwards; collectors and alerts stay local to the central broker.
BRIDGED_SUBTREES = ("meters/#", "gateways/#")
_CAMPUS = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class BridgeError(Exception):
    """A bridge request that cannot be carried out; the message says why."""


def check_campus(campus: str) -> str:
    """A campus id is one topic level and a broker user name: 1-64 of A-Z a-z 0-9 _ . -."""
    if not _CAMPUS.match(campus) or campus in (".", ".."):
        raise BridgeError(f"campus id {campus!r} must be 1-64 of A-Z a-z 0-9 _ . -")
    return campus


def remote_prefix(campus: str) -> str:
    """Where a campus's topics live on the central broker: ``east/campus/v1/``."""
    return f"{check_campus(campus)}/{TOPIC_ROOT}/"


def status_topic(campus: str) -> str:
    """Retained ``1``/``0`` on the campus broker: the bridge is up or down (readable by ``monitor``)."""
    return f"{TOPIC_ROOT}/bridges/{check_campus(campus)}/status"


@dataclass(frozen=True, slots=True)
class BridgeSpec:
    """What one campus broker needs to reach the central one.

    ``cafile`` turns TLS on (with host-name verification; the address must be a name or address
    in the central broker certificate's SANs). ``certfile``/``keyfile`` give the bridge a client
    certificate for a central listener with ``require_certificate``.
    """

    campus: str
    host: str
    port: int
    username: str
    password: str
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    keepalive_s: int = 30
    restart_base_s: int = 5
    restart_cap_s: int = 60
    queue_qos0: bool = True


def render(spec: BridgeSpec) -> str:
    """The bridge section for the campus broker (a ``conf.d`` file: it holds a password, keep it 0600)."""
    campus = check_campus(spec.campus)
    if not 1 <= spec.port <= 65535:
        raise BridgeError(f"central port {spec.port} is not a TCP port")
    if any(c.isspace() for c in spec.password) or not spec.password:
        raise BridgeError("the bridge password must be non-empty and without white space")
    if (spec.certfile is None) != (spec.keyfile is None):
        raise BridgeError("a client certificate needs both certfile and keyfile")
    if spec.certfile and not spec.cafile:
        raise BridgeError("a client certificate needs TLS: give the central broker's CA (cafile)")
    if spec.restart_base_s < 1 or spec.restart_cap_s < spec.restart_base_s:
        raise BridgeError("restart back-off: base >= 1 s and cap >= base")
    host = f"[{spec.host}]" if ":" in spec.host else spec.host
    lines = [
        f"# Bridge of campus {campus!r} to the central broker, written by `campusmon bridge config`.",
        "# Install as /etc/mosquitto/conf.d/campusmon-bridge.conf (mode 0600, owner mosquitto) on the",
        "# campus broker; docs/deployment.md#campuses-joined-by-bridges.",
        "",
        "# QoS 0 readings are kept for the bridge while the link is down, like QoS 1 ones (a global",
        "# option: it also queues QoS 0 for other persistent sessions on this broker).",
        f"queue_qos0_messages {'true' if spec.queue_qos0 else 'false'}",
        "",
        "# No cap on the messages in flight to a client (a global option). With the default cap (20),",
        "# Mosquitto 2.0.11 moves queued readings into flight at each reconnect attempt of the bridge",
        "# and, once more than the cap are in flight, never sends a block of them: readings are lost",
        "# when the link fails to come back at the first attempt (measured; tests/test_bridge.py).",
        "max_inflight_messages 0",
        "",
        f"connection campusmon-{campus}",
        f"address {host}:{spec.port}",
        "bridge_protocol_version mqttv311",
        # The central broker only accepts ids with the project's prefix and then names the
        # session after the user (campusmon.mqtt.CLIENT_ID_PREFIX).
        f"remote_clientid {CLIENT_ID_PREFIX}bridge-{campus}",
        f"remote_username {spec.username}",
        f"remote_password {spec.password}",
        f"local_clientid campusmon-bridge-{campus}",
        # Persistent sessions on both ends: what the link does not carry now waits in the campus
        # broker's queue (persisted to disk) and goes once the link is back.
        "cleansession false",
        "local_cleansession false",
        "start_type automatic",
        f"restart_timeout {spec.restart_base_s} {spec.restart_cap_s}",
        f"keepalive_interval {spec.keepalive_s}",
        "try_private true",
        "bridge_attempt_unsubscribe false",
        "notifications true",
        "notifications_local_only true",
        f"notification_topic {status_topic(campus)}",
    ]
    if spec.cafile:
        lines += [f"bridge_cafile {spec.cafile}", "bridge_insecure false", "bridge_tls_version tlsv1.2"]
    if spec.certfile:
        lines += [f"bridge_certfile {spec.certfile}", f"bridge_keyfile {spec.keyfile}"]
    local = f"{TOPIC_ROOT}/"
    lines += [f"topic {t} out 1 {local} {remote_prefix(campus)}" for t in BRIDGED_SUBTREES]
    return "\n".join(lines) + "\n"


def write(path: Path, text: str) -> Path:
    """Write 0600 from the start: the file carries the bridge's password."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)
    return path
