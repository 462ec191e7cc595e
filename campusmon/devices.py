"""Per-device broker credentials: the registry behind ``campusmon devices``.

Each identity (a meter, a gateway, a collector, the API, a status monitor) gets its own user name
and random password. The password is shown once and kept only as Mosquitto's PBKDF2 hash in
``passwd`` (hashed by ``mosquitto_passwd -U`` from a 0600 file, so it never appears on a command
line). ``acl`` is written from the registry with one explicit block per user rather than ``%u``
patterns: a pattern applies to every user, so a gateway named like a meter could speak for that
meter, while an explicit block grants exactly the topics of that identity's kind. After every
change the broker is sent SIGHUP, which re-reads both files and disconnects clients whose
password is gone, without a restart.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from campusmon.wire import TOPIC_ROOT

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
KINDS = ("meter", "gateway", "collector", "api", "monitor", "bridge")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class DeviceError(Exception):
    """A device request that cannot be carried out; the message says why."""


def acl_rules(kind: str, name: str, meters: list[str]) -> list[str]:
    """The topics one identity may use; nothing else is granted (Mosquitto denies by default)."""
    if kind == "meter":
        return [f"topic write {TOPIC_ROOT}/meters/{m}/#" for m in (meters or [name])]
    if kind == "gateway":
        return [f"topic write {TOPIC_ROOT}/gateways/{name}/#"]
    if kind == "collector":
        return [
            f"topic read {TOPIC_ROOT}/meters/#",
            f"topic read {TOPIC_ROOT}/gateways/#",
            f"topic read +/{TOPIC_ROOT}/meters/#",  # forwarded by campus bridges (campusmon/bridge.py)
            f"topic read +/{TOPIC_ROOT}/gateways/#",
            f"topic readwrite {TOPIC_ROOT}/collectors/{name}/#",
        ]
    if kind == "api":
        return [f"topic write {TOPIC_ROOT}/alerts/#", f"topic read {TOPIC_ROOT}/+/+/status"]
    if kind == "monitor":
        return [
            f"topic read {TOPIC_ROOT}/+/+/status",
            f"topic read {TOPIC_ROOT}/gateways/+/health",
            f"topic read {TOPIC_ROOT}/alerts/#",
        ]
    if kind == "bridge":  # a campus broker's bridge, named after its campus: only under its prefix
        return [f"topic write {name}/{TOPIC_ROOT}/meters/#", f"topic write {name}/{TOPIC_ROOT}/gateways/#"]
    raise DeviceError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")


@dataclass
class Device:
    name: str
    kind: str
    meters: list[str] = field(default_factory=list)
    created: str = ""
    rotated: str | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class DeviceRegistry:
    """Devices of one broker, kept in that broker's data directory next to ``passwd`` and ``acl``."""

    def __init__(self, broker_dir: Path) -> None:
        self.dir = Path(broker_dir)
        self.registry = self.dir / "devices.json"
        self.password_file = self.dir / "passwd"
        self.acl_file = self.dir / "acl"

    # -- reading --------------------------------------------------------------------------------

    def devices(self) -> list[Device]:
        try:
            raw = json.loads(self.registry.read_text())
        except FileNotFoundError:
            return []
        return [Device(**d) for d in raw]

    def get(self, name: str) -> Device | None:
        return next((d for d in self.devices() if d.name == name), None)

    # -- changing -------------------------------------------------------------------------------

    def add(self, name: str, kind: str, meters: list[str] | None = None, password: str | None = None) -> str:
        """Register ``name`` and return its password (generated unless given); shown only now."""
        if not _NAME.match(name):
            raise DeviceError(f"device name {name!r} must be 1-64 of A-Z a-z 0-9 _ . -")
        for m in meters or []:
            if not _NAME.match(m):
                raise DeviceError(f"meter id {m!r} must be 1-64 of A-Z a-z 0-9 _ . -")
        if meters and kind != "meter":
            raise DeviceError("only a meter identity lists meters (a head-end relaying several)")
        acl_rules(kind, name, meters or [])  # validates the kind
        devs = self.devices()
        if any(d.name == name for d in devs):
            raise DeviceError(f"device {name!r} exists; use `rotate` for a new password")
        devs.append(Device(name, kind, list(meters or []), _now()))
        pw = password or secrets.token_urlsafe(24)
        self._set_password(name, pw)
        self._save(devs)
        return pw

    def rotate(self, name: str, password: str | None = None) -> str:
        """A new password; the old one stops working at the next reload (connected clients are cut off)."""
        devs = self.devices()
        d = next((d for d in devs if d.name == name), None)
        if d is None:
            raise DeviceError(f"no device {name!r}")
        pw = password or secrets.token_urlsafe(24)
        self._set_password(name, pw)
        d.rotated = _now()
        self._save(devs)
        return pw

    def revoke(self, name: str) -> None:
        devs = self.devices()
        if not any(d.name == name for d in devs):
            raise DeviceError(f"no device {name!r}")
        self._write_passwd({u: h for u, h in self._hashes().items() if u != name})
        self._save([d for d in devs if d.name != name])

    # -- files ----------------------------------------------------------------------------------

    def _hashes(self) -> dict[str, str]:
        try:
            lines = self.password_file.read_text().splitlines()
        except FileNotFoundError:
            return {}
        return dict(line.split(":", 1) for line in lines if ":" in line)

    def _set_password(self, name: str, password: str) -> None:
        if not Path(MOSQUITTO_PASSWD).exists():
            raise DeviceError(f"{MOSQUITTO_PASSWD} not found; install the mosquitto package (`make deps`)")
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".pw-")
        try:
            with os.fdopen(fd, "w") as fh:  # mkstemp files are 0600
                fh.write(f"{name}:{password}\n")
            r = subprocess.run([MOSQUITTO_PASSWD, "-U", tmp], capture_output=True, text=True)
            if r.returncode != 0:
                raise DeviceError(f"mosquitto_passwd failed: {(r.stderr or r.stdout).strip()}")
            hashed = Path(tmp).read_text().strip().split(":", 1)[1]
        finally:
            Path(tmp).unlink(missing_ok=True)
        hashes = self._hashes()
        hashes[name] = hashed
        self._write_passwd(hashes)

    def _write_passwd(self, hashes: dict[str, str]) -> None:
        _atomic_write(self.password_file, "".join(f"{u}:{h}\n" for u, h in hashes.items()))

    def _save(self, devs: list[Device]) -> None:
        _atomic_write(self.registry, json.dumps([asdict(d) for d in devs], indent=1) + "\n")
        blocks = [
            "# Written by `campusmon devices` from devices.json; edits here are overwritten.\n"
            "# No rules for anonymous clients: the broker refuses them.\n"
        ]
        for d in devs:
            blocks.append(f"user {d.name}\n" + "".join(r + "\n" for r in acl_rules(d.kind, d.name, d.meters)))
        _atomic_write(self.acl_file, "\n".join(blocks))


def _atomic_write(path: Path, text: str) -> None:
    """Readers (the broker on SIGHUP) see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
