"""gateway.yaml validation and the wall-clock schedule."""

from __future__ import annotations

from datetime import datetime
from datetime import time as dtime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from campusmon.config import ConfigError
from gateway.bus import make_slots
from gateway.config import load_gateway_config, parse_gateway_config
from gateway.protocols.drivers import make_driver
from gateway.scheduler import daily_trigger, next_fire, poll_trigger
from tests.conftest import ROOT


def _cfg(meters: list[dict], **extra: object) -> dict:
    return {
        "gateway": {"id": "gw-1"},
        "buses": [{"id": "b1", "port": "/dev/null", "meters": meters}],
        **extra,
    }


def test_shipped_example_is_valid_and_every_meter_gets_a_driver() -> None:
    cfg = load_gateway_config(ROOT / "deploy" / "gateway.yaml", environ={})
    slots = [s for b in cfg.buses for s in make_slots(b, make_driver)]
    assert len(slots) == len(cfg.meters()) >= 8
    assert {s.protocol for s in slots} == {"dlt645", "cjt188", "modbus-rtu"}
    assert cfg.client_id == "campusmon-gw-gw-dorm-1"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            _cfg([{"id": "m1", "protocol": "dlt645", "address": "1", "group": "fast"}]),
            "buses[0].meters[0] (m1): poll group 'fast' is not defined",
        ),
        (
            _cfg([{"id": "m1", "protocol": "modbus-rtu", "address": "3", "profile": "eastron_sdm630"}]),
            "m1: set kind (electricity, water, gas or heat) for a modbus-rtu meter",
        ),
        (
            _cfg(
                [
                    {"id": "m1", "protocol": "dlt645", "address": "1"},
                    {"id": "m1", "protocol": "cjt188", "address": "2"},
                ]
            ),
            "duplicate meter id(s): m1",
        ),
        (
            _cfg([{"id": "m1", "protocol": "iec62056", "address": "1"}]),
            "buses[0].meters[0].protocol: Input should be 'dlt645'",
        ),
        (
            _cfg([], poll_groups={"slow": {"interval_s": 7200}}),
            "poll_groups.slow.interval_s: Input should be less",
        ),
        (_cfg([], mqtt={"hots": "x"}), "mqtt.hots: Extra inputs are not permitted"),
        ({"buses": []}, "gateway: Field required"),
        (None, "expected a mapping with gateway and buses, got nothing"),
    ],
)
def test_mistakes_are_reported_with_their_place(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_gateway_config(data, "gw.yaml", environ={})
    assert message in str(e.value)
    assert str(e.value).startswith("gw.yaml: ")


def test_environment_overrides_and_friendly_spellings() -> None:
    cfg = parse_gateway_config(_cfg([{"id": "m1", "protocol": "dlt645", "address": "1"}], buses=[
        {"id": "b1", "port": "socket://10.0.0.9:4001", "parity": "even", "meters": []}]),
        "gw.yaml", environ={"CAMPUSMON_MQTT__PORT": "1884", "CAMPUSMON_MQTT__PASSWORD": "0123"})  # fmt: skip
    assert (cfg.mqtt.port, cfg.mqtt.password, cfg.buses[0].parity) == (1884, "0123", "E")


def test_missing_file_points_at_the_example(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found \\(copy deploy/gateway.yaml to start\\)"):
        load_gateway_config(tmp_path / "nope.yaml", environ={})


@pytest.mark.parametrize(
    ("interval", "now", "expected"),
    [
        (900, "2026-03-05 10:07:13", "2026-03-05 10:15:00"),
        (900, "2026-03-05 23:50:00", "2026-03-06 00:00:00"),
        (3600, "2026-03-05 10:07:13", "2026-03-05 11:00:00"),
        (300, "2026-03-05 10:07:13", "2026-03-05 10:10:00"),
        (10, "2026-03-05 10:07:13", "2026-03-05 10:07:20"),
    ],
)
def test_poll_groups_fire_on_the_local_wall_clock_grid(interval: int, now: str, expected: str) -> None:
    for zone in ("Asia/Shanghai", "Asia/Kolkata", "Europe/Berlin"):
        tz = ZoneInfo(zone)
        got = next_fire(poll_trigger(interval, tz), datetime.fromisoformat(now).replace(tzinfo=tz))
        assert got == datetime.fromisoformat(expected).replace(tzinfo=tz), zone


def test_grid_holds_across_a_daylight_saving_change() -> None:
    tz = ZoneInfo("Europe/Berlin")  # 2026-03-29 02:00 -> 03:00
    got = next_fire(poll_trigger(900, tz), datetime(2026, 3, 29, 3, 5, tzinfo=tz))
    assert (got.hour, got.minute, got.second) == (3, 15, 0)


def test_time_sync_runs_once_a_day_at_local_time() -> None:
    tz = ZoneInfo("Asia/Shanghai")
    trig = daily_trigger(dtime(3, 7), tz)
    assert next_fire(trig, datetime(2026, 3, 5, 10, 0, tzinfo=tz)) == datetime(2026, 3, 6, 3, 7, tzinfo=tz)


def _two_buses(port_a: str, port_b: str) -> dict:
    return {
        "gateway": {"id": "gw-1"},
        "buses": [
            {"id": "b1", "port": port_a, "meters": [{"id": "m1", "protocol": "dlt645", "address": "1"}]},
            {"id": "b2", "port": port_b, "meters": [{"id": "m2", "protocol": "dlt645", "address": "2"}]},
        ],
    }


@pytest.mark.parametrize(
    ("port_a", "port_b"),
    [
        ("/dev/ttyUSB0", "/dev/ttyUSB0"),
        ("/dev/ttyUSB0", "/dev/../dev/ttyUSB0"),
        ("socket://10.0.0.9:4001", "socket://10.0.0.9:4001"),
        ("socket://GW-Serial.local:4001", "rfc2217://gw-serial.local:4001?logging=debug"),
    ],
)
def test_a_port_listed_twice_is_refused_at_load(port_a: str, port_b: str) -> None:
    """Two buses on one port would be two owner threads interleaving frames on one half-duplex line."""
    with pytest.raises(ConfigError) as e:
        parse_gateway_config(_two_buses(port_a, port_b), "gw.yaml", environ={})
    assert f"gw.yaml: (top level): buses[1] (b2): port {port_b!r} is already used by buses[0] (b1)" in str(
        e.value
    )


def test_two_names_of_one_device_are_one_port(tmp_path: Path) -> None:
    """A /dev/serial/by-id link and the device it points at are the same line."""
    dev = tmp_path / "ttyUSB0"
    dev.touch()
    link = tmp_path / "usb-FTDI_FT232R_A50285BI-if00-port0"
    link.symlink_to(dev)
    with pytest.raises(ConfigError, match="is already used by buses\\[0\\] \\(b1\\)"):
        parse_gateway_config(_two_buses(str(dev), str(link)), "gw.yaml", environ={})


def test_different_ports_are_accepted() -> None:
    for a, b in (("/dev/ttyUSB0", "/dev/ttyUSB1"), ("socket://10.0.0.9:4001", "socket://10.0.0.9:4002"),
                 ("loop://", "loop://")):  # fmt: skip
        cfg = parse_gateway_config(_two_buses(a, b), "gw.yaml", environ={})
        assert [x.port for x in cfg.buses] == [a, b]
