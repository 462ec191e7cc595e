"""Webhook requests: a signed generic JSON body, and the group-bot formats of WeCom, DingTalk and Feishu.

Pure: an event and a webhook's settings in, (url, headers, body bytes) out, so every format is
tested byte for byte without a network.

- generic: ``{"event": ..., "alert": {...}}``; ``X-Campusmon-Signature: sha256=<hex>`` is the
  HMAC-SHA256 of ``"<X-Campusmon-Timestamp>.<body>"`` with the webhook's secret.
- WeCom (企业微信) group robot: ``{"msgtype": "markdown", "markdown": {"content": ...}}`` (<= 4096 bytes).
- DingTalk (钉钉) custom robot: ``{"msgtype": "markdown", "markdown": {"title", "text"}}``; with a
  secret, ``&timestamp=<ms>&sign=<urlencoded base64 HMAC-SHA256(secret, "<ms>\\n<secret>")>``.
- Feishu (飞书) custom bot: ``{"msg_type": "text", "content": {"text": ...}}``; with a secret,
  ``timestamp`` (s) and ``sign`` = base64 HMAC-SHA256 keyed by ``"<ts>\\n<secret>"`` over an empty message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

from api.alerts.config import Webhook

SIGNATURE_HEADER = "X-Campusmon-Signature"
TIMESTAMP_HEADER = "X-Campusmon-Timestamp"
EVENT_HEADER = "X-Campusmon-Event"
DELIVERY_HEADER = "X-Campusmon-Delivery"
WECOM_MAX_BYTES = 4096

_VERB = {
    "opened": "NEW",
    "cleared": "CLEARED",
    "severity": "SEVERITY CHANGED",
    "acknowledged": "ACKNOWLEDGED",
    "assigned": "ASSIGNED",
    "note": "NOTE",
}


@dataclass(frozen=True, slots=True)
class Request:
    url: str
    headers: dict[str, str]
    body: bytes


def sign_generic(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_generic(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver runs to check a delivery came from this campus."""
    try:
        expected = sign_generic(secret, int(timestamp), body)
    except ValueError:
        return False
    return hmac.compare_digest(expected, signature)


def headline(event: dict[str, Any]) -> str:
    a = event["alert"]
    return f"[{a['severity'].upper()}] {_VERB.get(event['type'], event['type'].upper())}: {a['title']}"


def text_of(event: dict[str, Any], link: str | None) -> str:
    a = event["alert"]
    lines = [headline(event), a["message"]]
    if event["type"] == "note" and a.get("change"):
        lines.append(f"Note by {a['change'].get('author')}: {a['change'].get('text')}")
    if link:
        lines.append(link)
    return "\n".join(lines)


def markdown_of(event: dict[str, Any], link: str | None) -> str:
    a = event["alert"]
    md = [f"### {headline(event)}", "", a["message"], ""]
    md.append(
        f"> rule `{a['rule']}` · {a['subject']['kind']} `{a['subject']['id']}` · since {a.get('since') or '?'}"
    )
    if link:
        md.append(f"\n[Open alert #{a['id']}]({link})")
    return "\n".join(md)


def _truncate_utf8(text: str, limit: int) -> str:
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode(errors="ignore") + "..."


def build(
    w: Webhook, event: dict[str, Any], delivery_id: int, now: float, link: str | None = None
) -> Request:
    """The HTTP request of one delivery; ``now`` (seconds) stamps the signatures."""
    headers = {"Content-Type": "application/json; charset=utf-8"}
    url = w.url
    if w.format == "generic":
        body = json.dumps(
            {
                "event": event["type"],
                "event_id": event["id"],
                "at": event["at"],
                "link": link,
                "alert": event["alert"],
            },
            ensure_ascii=False,
            sort_keys=True,
        ).encode()
        ts = int(now)
        headers.update(
            {EVENT_HEADER: event["type"], DELIVERY_HEADER: str(delivery_id), TIMESTAMP_HEADER: str(ts)}
        )
        if w.secret:
            headers[SIGNATURE_HEADER] = sign_generic(w.secret, ts, body)
        return Request(url, headers, body)
    if w.format == "wecom":
        content = _truncate_utf8(markdown_of(event, link), WECOM_MAX_BYTES)
        body = json.dumps(
            {"msgtype": "markdown", "markdown": {"content": content}}, ensure_ascii=False
        ).encode()
        return Request(url, headers, body)
    if w.format == "dingtalk":
        body = json.dumps(
            {
                "msgtype": "markdown",
                "markdown": {"title": headline(event)[:64], "text": markdown_of(event, link)},
            },
            ensure_ascii=False,
        ).encode()
        if w.secret:
            ms = int(now * 1000)
            mac = hmac.new(w.secret.encode(), f"{ms}\n{w.secret}".encode(), hashlib.sha256).digest()
            sep = "&" if "?" in url else "?"
            url = f"{url}{sep}timestamp={ms}&sign={quote_plus(base64.b64encode(mac).decode())}"
        return Request(url, headers, body)
    doc: dict[str, Any] = {"msg_type": "text", "content": {"text": text_of(event, link)}}
    if w.secret:
        ts = int(now)
        mac = hmac.new(f"{ts}\n{w.secret}".encode(), b"", hashlib.sha256).digest()
        doc = {"timestamp": str(ts), "sign": base64.b64encode(mac).decode(), **doc}
    return Request(url, headers, json.dumps(doc, ensure_ascii=False).encode())


def accepted(fmt: str, status: int, body: bytes) -> tuple[bool, str]:
    """Bots answer HTTP 200 with an error code inside; only a zero code is a delivery."""
    if not 200 <= status < 300:
        return False, f"HTTP {status}: {body[:200].decode(errors='replace')}"
    if fmt == "generic":
        return True, ""
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        return False, f"not JSON: {body[:200].decode(errors='replace')}"
    code = doc.get("errcode", doc.get("code", doc.get("StatusCode", 0)))
    if code not in (0, "0", None):
        return (
            False,
            f"{fmt} refused: code {code}: {doc.get('errmsg') or doc.get('msg') or doc.get('StatusMessage')}",
        )
    return True, ""
