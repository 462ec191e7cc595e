"""Delivers pending notifications with exponential back-off; failures stay in the table, visible.

Deliveries are rows written in the same transaction as their event, so whichever process raised
an alert, the dispatcher (run by a worker, or by the API's scheduler) finds and sends it.
Delivery is at least once: a worker killed between a receiver's 200 and its own record is
followed by one that sends again, with the same ``X-Campusmon-Delivery`` id for the receiver to
drop the repeat (docs/deployment.md).

Per channel, events go out in order: a delivery waiting for its retry holds back the later ones of
that channel, and only those: channels are queued separately and served in turn.
"""

from __future__ import annotations

import email.policy
import json
import logging
import smtplib
import ssl
import threading
import time
from collections.abc import Callable, Collection
from email.message import EmailMessage
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from api.alerts.config import AlertsConfig
from api.alerts.models import AlertEvent, Delivery
from api.alerts.notify import formats
from api.alerts.notify.channels import UNIT_EMAIL
from api.alerts.store import event_json
from campusmon.config import CampusConfig

log = logging.getLogger(__name__)

ALERT_TOPIC = "campus/v1/alerts/{rule}/{subject}"
# Long subjects stay on one line (RFC 5322 allows 998 characters); folding confuses some clients.
SMTP_POLICY = email.policy.SMTP.clone(max_line_length=998)


def topic_for(alert: dict[str, Any]) -> str:
    """``campus/v1/alerts/<rule>/<subject id>``; MQTT wildcards and separators in ids become '_'."""
    subject = "".join("_" if c in "/+#" else c for c in alert["subject"]["id"]) or "_"
    return ALERT_TOPIC.format(rule=alert["rule"], subject=subject)


def backoff(attempts: int, base: float, cap: float) -> float:
    return min(base * 2 ** max(attempts - 1, 0), cap)


class Dispatcher:
    def __init__(
        self,
        cfg: CampusConfig,
        acfg: AlertsConfig,
        sessions: sessionmaker,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.acfg = acfg
        self.sessions = sessions
        self.clock = clock
        self.http = httpx.Client(follow_redirects=False)
        self._mqtt: Any = None
        self._lock = threading.Lock()

    def link(self, alert_id: int) -> str | None:
        base = self.acfg.settings.public_url.rstrip("/")
        return f"{base}/api/v1/alerts/{alert_id}" if base else None

    def run_once(
        self,
        limit: int = 200,
        channels: Collection[str] | None = None,
        exclude: Collection[str] = (),
        still_mine: Callable[[str], bool] | None = None,
    ) -> int:
        """Send what is due; returns how many were delivered in this run.

        Each channel has its own queue: up to ``limit`` of its oldest pending deliveries, sent in
        order and taken in turn with the other channels', so a dead receiver with a long backlog
        holds back only its own channel, never the others. Several workers split the channels
        (``channels``/``exclude``); ``still_mine(channel)`` is asked before every send, so a worker
        whose lease lapsed stops sending at once rather than racing the one that took it over.
        """
        with self._lock:
            now = self.clock()
            with self.sessions() as s:
                q = select(Delivery.channel).where(Delivery.status == "pending").distinct()
                if channels is not None:
                    q = q.where(Delivery.channel.in_(list(channels)))
                if exclude:
                    q = q.where(Delivery.channel.not_in(list(exclude)))
                channels = sorted(s.scalars(q))
                queues: dict[str, list[Delivery]] = {}
                for ch in channels:
                    q = list(
                        s.scalars(
                            select(Delivery)
                            .where(Delivery.status == "pending", Delivery.channel == ch)
                            .order_by(Delivery.id)
                            .limit(limit)
                        )
                    )
                    if q:
                        queues[ch] = q
                wanted = {d.event_id for q in queues.values() for d in q}
                events = {
                    e.id: event_json(e)
                    for e in s.scalars(select(AlertEvent).where(AlertEvent.id.in_(wanted)))
                }
            sent = 0
            turn = 0
            while queues:
                for ch in list(queues):
                    q = queues[ch]
                    d = q[turn]
                    if d.next_attempt_at > now:  # waiting for its retry: the later ones wait too
                        del queues[ch]
                        continue
                    if still_mine is not None and not still_mine(ch):
                        del queues[ch]
                        continue
                    ev = events.get(d.event_id)
                    ok, err = (False, "event missing") if ev is None else self._send(d.channel, ev, d.id)
                    self._record(d.id, ok, err)
                    if ok:
                        sent += 1
                    if not ok or turn + 1 >= len(q):
                        del queues[ch]
                turn += 1
            return sent

    def _record(self, delivery_id: int, ok: bool, err: str) -> None:
        st = self.acfg.settings.delivery
        now = self.clock()
        with self.sessions() as s, s.begin():
            d = s.get(Delivery, delivery_id)
            if d is None:
                return
            d.attempts += 1
            if ok:
                d.status, d.delivered_at, d.last_error = "delivered", int(now), None
            else:
                d.last_error = err[:2000]
                if d.attempts >= st.max_attempts:
                    d.status = "failed"
                    log.warning(
                        "delivery %s to %s failed for good after %s attempts: %s",
                        d.id,
                        d.channel,
                        d.attempts,
                        err,
                    )
                else:
                    d.next_attempt_at = now + backoff(d.attempts, st.backoff_s, st.max_backoff_s)

    def _send(self, channel: str, event: dict[str, Any], delivery_id: int) -> tuple[bool, str]:
        try:
            if channel.startswith("webhook:"):
                return self._webhook(channel.split(":", 1)[1], event, delivery_id)
            if channel == "smtp":
                return self._email(event)
            if channel.startswith(UNIT_EMAIL):
                unit = self.cfg.unit(channel.removeprefix(UNIT_EMAIL))
                if unit is None or not unit.email:
                    return False, f"unit {channel.removeprefix(UNIT_EMAIL)!r} no longer has e-mail recipients"
                return self._email(event, unit.email)
            if channel == "mqtt":
                return self._mqtt_publish(event)
            return False, f"unknown channel {channel!r}"
        except Exception as e:
            return False, f"{type(e).__name__}: {e}"

    def _webhook(self, name: str, event: dict[str, Any], delivery_id: int) -> tuple[bool, str]:
        w = next((w for w in self.acfg.settings.webhooks if w.name == name), None)
        if w is None:
            return False, f"webhook {name!r} is no longer configured"
        req = formats.build(w, event, delivery_id, self.clock(), self.link(event["alert_id"]))
        try:
            resp = self.http.post(req.url, content=req.body, headers=req.headers, timeout=w.timeout_s)
        except httpx.HTTPError as e:
            return False, f"{type(e).__name__}: {e}"
        return formats.accepted(w.format, resp.status_code, resp.content)

    def _email(self, event: dict[str, Any], to: list[str] | None = None) -> tuple[bool, str]:
        """To ``alerts.smtp.to``, or to a unit's own recipients through the same server."""
        cfg = self.acfg.settings.smtp
        if cfg is None:
            return False, "smtp is no longer configured"
        msg = EmailMessage(policy=SMTP_POLICY)
        msg["Subject"] = formats.headline(event)
        msg["From"] = cfg.sender
        msg["To"] = ", ".join(to or cfg.to)
        msg["Message-ID"] = f"<alert-{event['alert_id']}-event-{event['id']}@campusmon>"
        msg.set_content(formats.text_of(event, self.link(event["alert_id"])))
        smtp_cls = smtplib.SMTP_SSL if cfg.ssl else smtplib.SMTP
        with smtp_cls(cfg.host, cfg.port, timeout=cfg.timeout_s) as smtp:
            if cfg.starttls and not cfg.ssl:
                smtp.starttls(context=ssl.create_default_context())
            if cfg.username:
                smtp.login(cfg.username, cfg.password or "")
            refused = smtp.send_message(msg)
        if refused:
            return False, f"refused recipients: {refused}"
        return True, ""

    def _mqtt_client(self) -> Any:
        if self._mqtt is None:
            from campusmon.mqtt import MqttAuth, make_client

            m = self.cfg.mqtt
            if m.username and not m.api_username:
                # A locked broker binds client ids to user names: as the collector, the API would
                # take over the collector's session and drop its queued readings.
                raise RuntimeError(
                    "set mqtt.api_username and mqtt.api_password: the API needs a broker identity of "
                    "its own (`campusmon devices add <name> --kind api`), not the collector's"
                )
            c = make_client(
                f"{m.client_id}-alerts", MqttAuth.of(m, m.api_username, m.api_password), protocol="3.1.1"
            )
            c.connect(m.host, m.port, keepalive=m.keepalive)
            c.loop_start()
            self._mqtt = c
        return self._mqtt

    def _mqtt_publish(self, event: dict[str, Any]) -> tuple[bool, str]:
        out = self.acfg.settings.mqtt
        c = self._mqtt_client()
        payload = json.dumps(event, ensure_ascii=False).encode()
        info = c.publish(topic_for(event["alert"]), payload, qos=out.qos, retain=out.retain)
        info.wait_for_publish(timeout=5.0)
        if not info.is_published():
            self.close_mqtt()
            return False, "MQTT publish not acknowledged within 5 s"
        return True, ""

    def close_mqtt(self) -> None:
        if self._mqtt is not None:
            try:
                self._mqtt.disconnect()
                self._mqtt.loop_stop()
            finally:
                self._mqtt = None

    def close(self) -> None:
        self.close_mqtt()
        self.http.close()


def deliveries_json(
    sessions: sessionmaker, status: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    q = select(Delivery).order_by(Delivery.id.desc()).limit(limit)
    if status:
        q = q.where(Delivery.status == status)
    with sessions() as s:
        return [
            {
                "id": d.id,
                "event_id": d.event_id,
                "alert_id": d.alert_id,
                "channel": d.channel,
                "status": d.status,
                "attempts": d.attempts,
                "next_attempt_at": d.next_attempt_at if d.status == "pending" else None,
                "created_at": d.created_at,
                "delivered_at": d.delivered_at,
                "last_error": d.last_error,
            }
            for d in s.scalars(q)
        ]


def retry_delivery(sessions: sessionmaker, delivery_id: int) -> bool:
    with sessions() as s, s.begin():
        d = s.get(Delivery, delivery_id)
        if d is None:
            return False
        d.status, d.attempts, d.next_attempt_at = "pending", 0, 0.0
        return True
