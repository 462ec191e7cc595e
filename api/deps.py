"""Small lookups shared by the API's routers."""

from __future__ import annotations

import socket

from fastapi import HTTPException, Request

from campusmon.config import CampusConfig, Meter


def broker_ok(cfg: CampusConfig, timeout: float = 1.0) -> bool:
    """A TCP connect is enough for readiness; the collector reports MQTT-level trouble itself."""
    try:
        with socket.create_connection((cfg.mqtt.host, cfg.mqtt.port), timeout=timeout):
            return True
    except OSError:
        return False


def get_meter(request: Request, meter_id: str) -> Meter:
    m = request.app.state.cfg.meter(meter_id)
    if m is None:
        raise HTTPException(404, f"meter {meter_id!r} is not in the campus registry")
    return m
