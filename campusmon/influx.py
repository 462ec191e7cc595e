"""All InfluxDB access: one schema, two write back-ends, InfluxQL reads.

Schema (docs/influxdb-schema.md): measurement = meter kind (``electricity`` | ``water``), tags
``meter``, ``building``, ``category``, one field per quantity, second precision. The same
(meter, quantity, ts) always lands on the same series, field and time, so a re-delivered
reading overwrites itself instead of doubling.

- ``v1``: HTTP ``/write`` with line protocol (InfluxDB 1.x, InfluxDB 3 Core's v1 endpoint).
- ``v2``: influxdb-client's batching ``WriteApi`` (InfluxDB 2.x, Cloud).
Reads are InfluxQL over ``/query``, which 1.x, 2.x (DBRP mapping) and 3.x all serve.
"""

from __future__ import annotations

import logging
import re
import threading
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
    def close(self) -> None: ...


class _InfluxQL:
    """InfluxQL over /query, shared by both back-ends."""

    def __init__(self, cfg: Influx, headers: dict[str, str], auth: httpx.Auth | None) -> None:
        self.cfg = cfg
        self.http = httpx.Client(
            base_url=cfg.url.rstrip("/"), timeout=cfg.timeout_s, headers=headers, auth=auth
        )

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
            resp = self.http.request(method, "/query", params=args)
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
        try:
            return self.http.get("/ping").status_code in (200, 204)
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self.http.close()


class V1Store(_InfluxQL):
    """InfluxDB 1.x HTTP API (and 3.x's v1-compatible endpoint)."""

    def __init__(self, cfg: Influx, tags: TagLookup) -> None:
        headers = {"Authorization": f"Token {cfg.token}"} if cfg.token else {}
        auth = httpx.BasicAuth(cfg.username, cfg.password or "") if cfg.username else None
        super().__init__(cfg, headers, auth)
        self.tags = tags

    def ensure_database(self) -> None:
        if self.cfg.create_database:
            self.query(f'CREATE DATABASE "{self.cfg.database}"')

    def write(self, readings: Sequence[Reading]) -> WriteOutcome:
        if not readings:
            return WriteOutcome()
        lines = [to_line(r, self.tags) for r in readings]
        return self.write_lines(lines, readings)

    def write_lines(self, lines: list[str], readings: Sequence[Reading]) -> WriteOutcome:
        params = {"db": self.cfg.database, "precision": "s"}
        if self.cfg.retention_policy:
            params["rp"] = self.cfg.retention_policy
        try:
            resp = self.http.post("/write", params=params, content="\n".join(lines).encode())
        except httpx.HTTPError as e:
            raise StoreUnavailable(f"influxdb write failed: {type(e).__name__}: {e}") from e
        if resp.status_code == 204:
            return WriteOutcome(stored=len(lines))
        try:
            text = str(resp.json().get("error", resp.text))
        except ValueError:
            text = resp.text
        if resp.status_code == 404 and "database not found" in text and self.cfg.create_database:
            self.ensure_database()
            raise StoreUnavailable("influxdb database was missing; created it, retrying")
        if resp.status_code in (400, 422):
            # A partial write: the good lines are stored. Never re-send them; keep the bad ones.
            bad = attribute_partial_write(text, lines)
            if bad is None:
                why = f"influxdb refused the batch (HTTP {resp.status_code}): {text[:300]}"
                return WriteOutcome(0, [(r, why) for r in readings])
            return WriteOutcome(len(lines) - len(bad), [(readings[i], bad[i]) for i in sorted(bad)])
        raise StoreUnavailable(f"influxdb write: HTTP {resp.status_code}: {text[:200]}")


class V2Store(_InfluxQL):
    """InfluxDB 2.x/Cloud through influxdb-client's batching WriteApi.

    A collector batch is handed over whole and ``write`` returns only once the client's callbacks
    report every line written (or failed after the client's own retries), so acks stay after-write.
    """

    def __init__(self, cfg: Influx, tags: TagLookup) -> None:
        from influxdb_client import InfluxDBClient, WriteOptions

        super().__init__(cfg, {"Authorization": f"Token {cfg.token}"} if cfg.token else {}, None)
        self.tags = tags
        self.client = InfluxDBClient(
            url=cfg.url, token=cfg.token or "", org=cfg.org, timeout=int(cfg.timeout_s * 1000)
        )
        self._lock = threading.Condition()
        self._done = 0
        self._error: str | None = None
        self._rejected: list[str] = []
        opts = WriteOptions(
            batch_size=5000,
            flush_interval=100,
            retry_interval=500,
            max_retries=3,
            max_retry_delay=5000,
            max_retry_time=15000,
            exponential_base=2,
        )
        self.write_api = self.client.write_api(
            write_options=opts,
            success_callback=self._ok,
            error_callback=self._err,
            retry_callback=self._retry,
        )

    def _count(self, data: Any) -> int:
        body = data.decode() if isinstance(data, bytes) else str(data)
        return body.count("\n") + 1 if body else 0

    def _ok(self, _conf: Any, data: Any) -> None:
        with self._lock:
            self._done += self._count(data)
            self._lock.notify_all()

    def _err(self, _conf: Any, data: Any, exc: Exception) -> None:
        status = getattr(exc, "status", None)
        with self._lock:
            if status is not None and 400 <= int(status) < 500 and int(status) != 429:
                self._rejected.append(f"influxdb refused the batch (HTTP {status}): {str(exc)[:200]}")
                self._done += self._count(data)
            else:
                self._error = f"influxdb v2 write failed: {type(exc).__name__}: {str(exc)[:200]}"
            self._lock.notify_all()

    def _retry(self, _conf: Any, _data: Any, exc: Exception) -> None:
        log.warning("influxdb v2 write retrying: %s", exc)

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

    def write(self, readings: Sequence[Reading]) -> WriteOutcome:
        if not readings:
            return WriteOutcome()
        lines = [to_line(r, self.tags) for r in readings]
        with self._lock:
            self._done, self._error, self._rejected = 0, None, []
        self.write_api.write(bucket=self.cfg.bucket, org=self.cfg.org, record=lines, write_precision="s")
        with self._lock:
            ok = self._lock.wait_for(lambda: self._error is not None or self._done >= len(lines), timeout=60)
            if self._error is not None or not ok:
                raise StoreUnavailable(self._error or "influxdb v2 write timed out")
            if self._rejected:
                return WriteOutcome(0, [(r, self._rejected[0]) for r in readings])
        return WriteOutcome(stored=len(lines))

    def close(self) -> None:
        try:
            self.write_api.close()
        finally:
            self.client.close()
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
