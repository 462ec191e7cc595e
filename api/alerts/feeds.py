"""Feed formats: Server-Sent Events frames and an Atom document of alert events."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

from api.alerts.notify.formats import headline


def sse_frame(event: dict[str, Any]) -> str:
    """One SSE event; ``id`` is the event log id a client sends back as Last-Event-ID."""
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return f"id: {event['id']}\nevent: {event['type']}\ndata: {data}\n\n"


def _rfc3339(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def atom(events: list[dict[str, Any]], self_url: str, base_url: str, title: str) -> str:
    """An Atom 1.0 feed (RFC 4287), newest entry first; one entry per alert event."""
    updated = _rfc3339(max((e["at"] for e in events), default=0))
    out = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<feed xmlns="http://www.w3.org/2005/Atom">',
        f"  <title>{escape(title)}</title>",
        f"  <id>{escape(self_url)}</id>",
        f'  <link rel="self" href="{escape(self_url)}"/>',
        f"  <updated>{updated}</updated>",
        "  <author><name>campusmon</name></author>",
    ]
    for e in events:
        a = e["alert"]
        link = f"{base_url.rstrip('/')}/api/v1/alerts/{a['id']}"
        out += [
            "  <entry>",
            f"    <id>urn:campusmon:alert:{a['id']}:event:{e['id']}</id>",
            f"    <title>{escape(headline(e))}</title>",
            f"    <updated>{_rfc3339(e['at'])}</updated>",
            f'    <link href="{escape(link)}"/>',
            f'    <category term="{escape(a["rule"])}"/>',
            f'    <category term="{escape(a["severity"])}"/>',
            f"    <summary>{escape(a['message'])}</summary>",
            "  </entry>",
        ]
    out.append("</feed>")
    return "\n".join(out) + "\n"
