"""All InfluxDB access: one schema, two write back-ends, InfluxQL reads.

Schema (docs/influxdb-schema.md): measurement = meter kind (``electricity`` | ``water``), tags
``meter``, ``building``, ``category``, one field per quantity, second precision. The same
(meter, quantity, ts) always lands on the same series, field and time, so a re-delivered
reading overwrites itself instead of doubling.

- ``v1``: HTTP ``/write`` with line protocol (InfluxDB 1.x, InfluxDB 3 Core's v1 endpoint).
- ``v2``: HTTP ``/api/v2/write`` with the same line protocol (InfluxDB 2.x, Cloud, 1.8+).
Reads are InfluxQL over ``/query``, which 1.x, 2.x (DBRP mapping) and 3.x all serve.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from campusmon.config import CampusConfig, Influx
from campusmon.quantities import QUANTITIES
from campusmon.reading import Reading

log = logging.getLogger(__name__)

TAG_KEYS = ("meter", "building", "category")


class StoreUnavailable(Exception):
    """The server could not take the write now; retry later, nothing was lost."""


class QueryError(Exception):
    """InfluxDB refused a query; the message is the server's."""


@dataclass(slots=True)
class WriteOutcome:
    stored: int = 0
    rejected: list[tuple[Reading, str]] = field(default_factory=list)


TagLookup = Callable[[str], dict[str, str]]


def _escape_tag(v: str) -> str:
    return v.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def to_line(r: Reading, tags: TagLookup) -> str:
    """Line protocol for one reading; one line per reading so a refused line maps to one reading."""
    q = QUANTITIES[r.quantity]
    tag_str = f"meter={_escape_tag(r.meter)}"
    for k, v in tags(r.meter).items():
        if v:
            tag_str += f",{k}={_escape_tag(v)}"
    return f"{q.kind.value},{tag_str} {r.quantity}={float(r.value)!r} {int(r.ts)}"


def tag_lookup(cfg: CampusConfig) -> TagLookup:
    cache: dict[str, dict[str, str]] = {}
    for m in cfg.meters:
        cache[m.id] = {"building": m.building, "category": m.category}

    def lookup(meter: str) -> dict[str, str]:
        return cache.get(meter, {})

    return lookup


# 1.x partial-write errors: which lines were refused.
_PARSE_ERR = re.compile(
    r"unable to parse '(?P<line>(?:[^'\\]|\\.)*)': (?P<why>[^\n]*?)(?=(?:\n|$| dropped=))"
)
_TYPE_CONFLICT = re.compile(
    r'field type conflict: input field "(?P<field>[^"]+)" on measurement "(?P<m>[^"]+)"'
)


def attribute_partial_write(error: str, lines: Sequence[str]) -> dict[int, str] | None:
    """Map a partial-write error to the indices of the refused lines, or None if it cannot be told."""
    bad: dict[int, str] = {}
    for m in _PARSE_ERR.finditer(error):
        for i, line in enumerate(lines):
            if line == m.group("line"):
                bad[i] = f"influxdb could not parse line: {m.group('why')}"
    for m in _TYPE_CONFLICT.finditer(error):
        prefix = m.group("m") + ","
        needle = f" {m.group('field')}="
        for i, line in enumerate(lines):
            if line.startswith(prefix) and needle in line:
                bad[i] = "influxdb field type conflict: " + m.group(0)
    return bad or None


class InfluxStore(Protocol):
    def write(self, readings: Sequence[Reading]) -> WriteOutcome: ...
    def query(
        self, q: str, params: dict[str, Any] | None = None, chunked: bool = False
    ) -> list[dict[str, Any]]: ...
    def ping(self) -> bool: ...
    def ensure_database(self) -> None: ...
    def write_derived(self, lines: Sequence[str], target: str | None = None) -> int: ...
    def close(self) -> None: ...


class _InfluxQL:
    """InfluxQL over /query, shared by both back-ends."""

    def __init__(self, cfg: Influx, headers: dict[str, str], auth: httpx.Auth | None) -> None:
        self.cfg = cfg
        self.http = httpx.Client(
            base_url=cfg.url.rstrip("/"), timeout=cfg.timeout_s, headers=headers, auth=auth
        )
        # Reads may go as a read-only user of their own (influxdb.read_username).
        ru = getattr(cfg, "read_username", None)
        self.read_auth = httpx.BasicAuth(ru, cfg.read_password or "") if ru else None

    def query(
        self, q: str, params: dict[str, Any] | None = None, chunked: bool = False
    ) -> list[dict[str, Any]]:
        """Run one or more statements; returns the series of every statement, in order.

        ``chunked`` has the server stream a large result in pieces: no server row limit applies and
        the read timeout runs between pieces, not over the whole query. Pieces of a series are joined.
        """
        import json

        args: dict[str, Any] = {"db": self.cfg.database, "q": q, "epoch": "s"}
        if self.cfg.backend == "v1" and self.cfg.retention_policy:
            args["rp"] = self.cfg.retention_policy
        if params:
            args["params"] = json.dumps(params)
        if chunked:
            args["chunked"] = "true"
            args["chunk_size"] = "20000"
        method = "POST" if re.match(r"\s*(CREATE|DROP|ALTER|DELETE|GRANT|REVOKE)", q, re.I) else "GET"
        try:
            auth = {"auth": self.read_auth} if method == "GET" and self.read_auth else {}
            resp = self.http.request(method, "/query", params=args, **auth)
        except httpx.HTTPError as e:
            raise StoreUnavailable(f"influxdb query failed: {e}") from e
        if resp.status_code >= 500:
            raise StoreUnavailable(f"influxdb query: HTTP {resp.status_code}: {resp.text[:200]}")
        try:
            lines = resp.text.splitlines() if chunked else []
            bodies = [json.loads(line) for line in lines if line.strip()] if chunked else [resp.json()]
        except ValueError:
            raise QueryError(f"influxdb query: HTTP {resp.status_code}: {resp.text[:200]}") from None
        out: list[dict[str, Any]] = []
        last_key: tuple[Any, ...] | None = None
        for body in bodies:
            if "error" in body:
                raise QueryError(body["error"])
            for result in body.get("results", []):
                if "error" in result:
                    raise QueryError(result["error"])
                for s in result.get("series", []):
                    tags = tuple(sorted(s.get("tags", {}).items()))
                    key = (result.get("statement_id"), s.get("name"), tags)
                    if chunked and key == last_key:
                        out[-1]["values"].extend(s.get("values", []))
                        continue
                    out.append(
                        {
                            "name": s.get("name"),
                            "tags": s.get("tags", {}),
                            "columns": s["columns"],
                            "values": s.get("values", []),
                        }
                    )
                    last_key = key
        return out

    def ping(self) -> bool:
        """Health probe (1.x and 2.x both serve /ping); short, so a hung server cannot stall a retry loop."""
        try:
            return self.http.get("/ping", timeout=min(2.0, self.cfg.timeout_s)).status_code in (200, 204)
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self.http.close()


def _chunks(lines: Sequence[str], max_bytes: int) -> list[tuple[int, int]]:
    """Index ranges of ``lines`` whose joined body stays within ``max_bytes`` (a longer line goes alone)."""
    out: list[tuple[int, int]] = []
    lo, size = 0, 0
    for i, line in enumerate(lines):
        n = len(line.encode()) + 1
        if i > lo and size + n > max_bytes:
            out.append((lo, i))
            lo, size = i, 0
        size += n
    if lo < len(lines):
        out.append((lo, len(lines)))
    return out


class _LineWriter(_InfluxQL):
    """Line-protocol writes over HTTP, one request per piece, shared by both back-ends.

    Every ``write`` builds its own outcome from its own responses, so concurrent callers (the HTTP
    ingest thread pool) never see each other's progress or errors. A batch is sent in pieces of at
    most ``max_body_bytes``. A piece the server refuses as too large (413) or refuses without saying
    which lines (400/422) is halved until the refused lines stand alone: what fits is stored and
    what cannot be stored comes back as rejected, with the server's reason, for the dead-letter store.
    Only trouble that may pass (connection errors, 5xx, 429, authentication, a missing database or
    bucket) raises StoreUnavailable; re-sending what a failed call already stored only overwrites it.
    """

    path = "/write"
    tags: TagLookup

    def write_params(self, target: str | None = None) -> dict[str, str]:
        raise NotImplementedError

    def write(self, readings: Sequence[Reading]) -> WriteOutcome:
        if not readings:
            return WriteOutcome()
        lines = [to_line(r, self.tags) for r in readings]
        return self.write_lines(lines, readings)

    def write_lines(self, lines: list[str], readings: Sequence[Reading]) -> WriteOutcome:
        out = WriteOutcome()
        params = self.write_params()
        for lo, hi in _chunks(lines, self.cfg.max_body_bytes):
            self._send(lines, readings, lo, hi, params, out)
        return out

    def _send(
        self,
        lines: list[str],
        readings: Sequence[Reading],
        lo: int,
        hi: int,
        params: dict[str, str],
        out: WriteOutcome,
    ) -> None:
        body = "\n".join(lines[lo:hi]).encode()
        status, text = self._post(body, params)
        if status in (200, 204):
            out.stored += hi - lo
            return
        if status == 404 and "database not found" in text and self.cfg.create_database:
            self.ensure_database()
            raise StoreUnavailable("influxdb database was missing; created it, retrying")
        if status in (400, 422):
            # A partial write: the good lines are stored. Keep the refused ones, named by the server.
            bad = attribute_partial_write(text, lines[lo:hi])
            if bad is not None:
                out.stored += hi - lo - len(bad)
                out.rejected.extend((readings[lo + i], bad[i]) for i in sorted(bad))
                return
            why = f"influxdb refused the line (HTTP {status}): {text[:300]}"
        elif status == 413:
            why = (
                f"influxdb refused the line as too large (HTTP 413, {len(body)} bytes; "
                f"raise the server's max-body-size): {text[:200]}"
            )
        else:
            raise StoreUnavailable(f"influxdb write: HTTP {status}: {text[:200]}")
        if hi - lo == 1:
            out.rejected.append((readings[lo], why))
            return
        log.warning(
            "influxdb write: HTTP %s for %d lines; splitting the request: %s", status, hi - lo, text[:200]
        )
        mid = (lo + hi) // 2
        self._send(lines, readings, lo, mid, params, out)
        self._send(lines, readings, mid, hi, params, out)

    def write_derived(self, lines: Sequence[str], target: str | None = None) -> int:
        """Lines the system derived itself (hourly rollups), into another retention policy (v1) or
        bucket (v2). Nothing here is a reading to dead-letter, so any refusal raises QueryError."""
        params = self.write_params(target)
        for lo, hi in _chunks(lines, self.cfg.max_body_bytes):
            status, text = self._post("\n".join(lines[lo:hi]).encode(), params)
            if status in (200, 204):
                continue
            if status in (400, 413, 422):
                raise QueryError(f"influxdb refused derived lines (HTTP {status}): {text[:300]}")
            raise StoreUnavailable(f"influxdb write: HTTP {status}: {text[:200]}")
        return len(lines)

    def _post(self, body: bytes, params: dict[str, str]) -> tuple[int, str]:
        """One write request: (HTTP status, the server's error text); StoreUnavailable if unanswered."""
        try:
            resp = self.http.post(self.path, params=params, content=body)
        except httpx.HTTPError as e:
            raise StoreUnavailable(f"influxdb write failed: {type(e).__name__}: {e}") from e
        return resp.status_code, "" if resp.status_code in (200, 204) else _error_text(resp)


def _error_text(resp: httpx.Response) -> str:
    """The server's error message: 1.x says ``error``, 2.x says ``message``."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or resp.text)
    return resp.text


class V1Store(_LineWriter):
    """InfluxDB 1.x HTTP API (and 3.x's v1-compatible endpoint)."""

    def __init__(self, cfg: Influx, tags: TagLookup) -> None:
        headers = {"Authorization": f"Token {cfg.token}"} if cfg.token else {}
        auth = httpx.BasicAuth(cfg.username, cfg.password or "") if cfg.username else None
        super().__init__(cfg, headers, auth)
        self.tags = tags

    def ensure_database(self) -> None:
        if self.cfg.create_database:
            self.query(f'CREATE DATABASE "{self.cfg.database}"')

    def write_params(self, target: str | None = None) -> dict[str, str]:
        params = {"db": self.cfg.database, "precision": "s"}
        if target or self.cfg.retention_policy:
            params["rp"] = target or self.cfg.retention_policy
        return params


class V2Store(_LineWriter):
    """InfluxDB 2.x/Cloud through influxdb-client: its synchronous WriteApi (token, org, bucket).

    Synchronous, not batching: each call is its own request, answered before ``write`` returns, so
    acks stay after-write and one caller's outcome is never another's (the batching WriteApi keeps
    progress on the shared instance). Retries are the caller's: the client's own are switched off.
    """

    def __init__(self, cfg: Influx, tags: TagLookup) -> None:
        from influxdb_client import InfluxDBClient

        super().__init__(cfg, {"Authorization": f"Token {cfg.token}"} if cfg.token else {}, None)
        self.tags = tags
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.client = InfluxDBClient(
            url=cfg.url, token=cfg.token or "", org=cfg.org, timeout=int(cfg.timeout_s * 1000), retries=False
        )
        self.write_api = self.client.write_api(write_options=SYNCHRONOUS)

    def write_params(self, target: str | None = None) -> dict[str, str]:
        return {"bucket": target} if target else {}

    def _post(self, body: bytes, params: dict[str, str]) -> tuple[int, str]:
        from influxdb_client import WritePrecision
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError as Urllib3Error

        try:
            bucket = params.get("bucket", self.cfg.bucket)
            self.write_api.write(bucket, self.cfg.org, body, write_precision=WritePrecision.S)
        except ApiException as e:
            text = e.body.decode(errors="replace") if isinstance(e.body, bytes) else str(e.body or e.reason)
            try:
                parsed = json.loads(text)
                text = str(parsed.get("message") or parsed.get("error") or text)
            except (ValueError, AttributeError):
                pass
            return int(e.status or 0), text
        except (Urllib3Error, OSError) as e:
            raise StoreUnavailable(f"influxdb write failed: {type(e).__name__}: {e}") from e
        return 204, ""

    def ensure_database(self) -> None:
        """Map database/rp to the bucket so InfluxQL reads work (best effort: not every server has DBRP)."""
        if not self.cfg.create_dbrp:
            return
        try:
            from influxdb_client.service.dbr_ps_service import DBRPsService

            bucket = self.client.buckets_api().find_bucket_by_name(self.cfg.bucket)
            if bucket is None:
                log.warning("bucket %s not found; create it before writing", self.cfg.bucket)
                return
            svc = DBRPsService(self.client.api_client)
            existing = svc.get_dbrps(org_id=bucket.org_id, db=self.cfg.database).content or []
            if not existing:
                from influxdb_client.domain.dbrp_create import DBRPCreate

                svc.post_dbrp(
                    DBRPCreate(
                        org_id=bucket.org_id,
                        bucket_id=bucket.id,
                        database=self.cfg.database,
                        retention_policy=self.cfg.retention_policy,
                        default=True,
                    )
                )
        except Exception as e:
            log.warning("could not create the DBRP mapping for InfluxQL reads: %s", e)

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            super().close()


def open_store(cfg: CampusConfig) -> InfluxStore:
    tags = tag_lookup(cfg)
    if cfg.influxdb.backend == "v2":
        return V2Store(cfg.influxdb, tags)
    return V1Store(cfg.influxdb, tags)


def rows(series: dict[str, Any]) -> list[dict[str, Any]]:
    """Series values as dicts keyed by column name."""
    cols = series["columns"]
    return [dict(zip(cols, v, strict=False)) for v in series["values"]]
