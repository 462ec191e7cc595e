"""The one place a paho MQTT client is built, so every process speaks to the broker the same way.

Collector, gateway publisher, alert notifier, simulators and status probes all call
:func:`make_client` with an :class:`MqttAuth` taken from their config section: username and
password, the CA that signed the broker's certificate, an optional client certificate and key
(for brokers that require one), and the lowest TLS version accepted. Building the TLS context
here means a client can never silently skip certificate or host-name verification.
"""

from __future__ import annotations

import secrets
import ssl
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# Every client id sent with credentials starts with this; the project's broker refuses other ids
# (``clientid_prefixes``) and then replaces the id by the user name. The prefix contains ':', which
# no user name may, so a client id offered on the wire is never the name of someone's session.
# Without it, Mosquitto 2.0.11 lets an anonymous CONNECT carrying the collector's user name as its
# client id delete the collector's offline session while refusing the connection.
CLIENT_ID_PREFIX = "cm:"


@dataclass(frozen=True, slots=True)
class MqttAuth:
    """Who a client is and how it checks the broker; every field is optional (an open test broker)."""

    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    tls_version: str = "1.2"

    @classmethod
    def of(cls, section: Any, username: str | None = None, password: str | None = None) -> MqttAuth:
        """From a config section (campus ``mqtt`` or gateway ``mqtt``); ``username`` overrides its identity."""
        return cls(
            username=username if username is not None else getattr(section, "username", None),
            password=password if username is not None else getattr(section, "password", None),
            tls=bool(getattr(section, "tls", False)),
            ca_certs=getattr(section, "ca_certs", None),
            certfile=getattr(section, "certfile", None),
            keyfile=getattr(section, "keyfile", None),
            tls_version=getattr(section, "tls_version", "1.2") or "1.2",
        )


def tls_context(auth: MqttAuth) -> ssl.SSLContext:
    """Verifying context: the given CA (or the system store), host names checked, no TLS below ``tls_version``."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=auth.ca_certs)
    ctx.minimum_version = TLS_VERSIONS[auth.tls_version]
    if auth.certfile:
        ctx.load_cert_chain(auth.certfile, auth.keyfile)
    return ctx


def make_client(
    client_id: str = "",
    auth: MqttAuth | None = None,
    *,
    protocol: str = "5",
    manual_ack: bool = False,
) -> mqtt.Client:
    """A paho client with the identity and TLS settings of ``auth``; callbacks are the caller's."""
    auth = auth or MqttAuth()
    if auth.username or auth.certfile:
        client_id = CLIENT_ID_PREFIX + (client_id or secrets.token_hex(8))
    v5 = protocol == "5"
    kw: dict[str, Any] = {} if v5 else {"clean_session": True}
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        manual_ack=manual_ack,
        **kw,
    )
    if auth.username:
        c.username_pw_set(auth.username, auth.password)
    if auth.tls or auth.certfile:
        c.tls_set_context(tls_context(auth))
    return c
