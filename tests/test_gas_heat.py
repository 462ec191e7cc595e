"""Gas and heat meters: simulated CJ/T 188 and Modbus meters on the serial bus -> gateway -> broker ->
collector -> InfluxDB -> consumption, the captured CJ/T 188 heat-meter vectors, and the wire format."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from api.accounting import service
from api.accounting.campus import Scope
from api.accounting.settings import parse_accounting
from campusmon.config import ConfigError, parse_config
from campusmon.influx import open_store
from campusmon.ingest import rules_from
from campusmon.quantities import QUANTITIES, REGISTER, MeterKind, convert
from campusmon.reading import Reading
from campusmon.wire import (
    BAD_UNIT,
    NEGATIVE_CUMULATIVE,
    OUT_OF_RANGE,
    UNKNOWN_QUANTITY,
    WRONG_KIND,
    encode_senml,
    parse_payload,
)
from collectors.mqtt_collector import MqttCollector
from firmware_sim.serial.cjt188_heat_meter import Cjt188HeatMeter
from firmware_sim.serial.cjt188_meter import Cjt188Meter
from firmware_sim.serial.clock import SimClock
from firmware_sim.serial.modbus_meter import ModbusMeter
from firmware_sim.serial.spec import BusSpec, build_meters
from gateway.config import parse_gateway_config
from gateway.protocols.drivers import make_driver
from gateway.service import Gateway
from tests.gateway_sim import Spec, gateway_config, influx_readings, start_sim
from tests.helpers import wait_until

VECTORS = Path(__file__).parent / "vectors" / "cjt188.json"
GAS, HEAT = MeterKind.GAS.value, MeterKind.HEAT.value


def _spec(id_: str, protocol: str, address: str, make: Any, kind: str, category: str, building: str,
          **extra: Any) -> Spec:  # fmt: skip
    return Spec(id_, protocol, address, make, {"kind": kind, "category": category, **extra}, building)


def carriers() -> list[Spec]:
    """A canteen's gas meter and a boiler room's volume corrector; heat, cooling and Modbus heat meters."""
    return [
        _spec("g-cjt-1", "cjt188", "30000000000001",
              lambda c: Cjt188Meter("30000000000001", meter_type=0x30, profile="canteen", clock=c),
              GAS, "03000", "canteen-1", options={"meter_type": "gas"}),
        _spec("h-cjt-1", "cjt188", "20000000000001",
              lambda c: Cjt188HeatMeter("20000000000001", meter_type=0x20, clock=c),
              HEAT, "04000", "dorm-1", options={"meter_type": "heat"}),
        _spec("c-cjt-1", "cjt188", "21000000000001",  # a cooling meter counting GJ, unit code first (JY)
              lambda c: Cjt188HeatMeter("21000000000001", meter_type=0x21, profile="cooling", unit=0x11,
                                        unit_first=True, clock=c),
              HEAT, "05000", "dorm-1", options={"meter_type": "cooling"}, profile="jy-heat"),
        _spec("h-mb-1", "modbus-rtu", "21", lambda c: ModbusMeter(21, model="example_heat", clock=c),
              HEAT, "04000", "lab-1", profile="example_heat_meter"),
        _spec("g-mb-1", "modbus-rtu", "22",
              lambda c: ModbusMeter(22, model="example_gas_corrector", profile="canteen", clock=c),
              GAS, "03A00", "boiler-1", profile="example_gas_volume_corrector"),
    ]  # fmt: skip


def campus(specs: list[Spec], gid: str) -> dict[str, Any]:
    types = {"canteen-1": "canteen", "dorm-1": "dorm", "lab-1": "lab", "boiler-1": "other"}
    return {
        "buildings": [{"id": b, "type": t, "floor_area_m2": 2000} for b, t in types.items()],
        "gateways": [{"id": gid}],
        "meters": [
            {"id": s.id, "building": s.building, "kind": s.extra["kind"], "category": s.extra["category"],
             "gateway": gid}
            for s in specs
        ],
    }  # fmt: skip


def _stored(store: Any, ids: set[str]) -> dict[tuple[str, str, int], float]:
    return {k: v for k, v in influx_readings(store).items() if k[0] in ids}


def test_gas_and_heat_meters_end_to_end_consumption_is_exact(
    mosquitto: Any, influxdb: Any, make_config: Any, tmp_path: Path
) -> None:
    specs = carriers()
    ids = {s.id for s in specs}
    gid = "gw-" + uuid.uuid4().hex[:8]
    cfg = make_config(mosquitto, influxdb, data=campus(specs, gid))
    collector = MqttCollector(cfg).start()
    collector.store.ensure_database()
    clock = SimClock(frozen=True)
    sim, url = start_sim(specs, "tcp", clock)
    gw_cfg = gateway_config(
        tmp_path, url, specs, mosquitto.port, gateway_id=gid, gateway={"poll_on_start": False}
    )
    gw = Gateway(gw_cfg)
    store = open_store(cfg)
    try:
        gw.start()
        before = {s.id: sim.meter(s.address).registers() for s in specs}  # frozen: what the next read serves
        gw.poll_all()
        first = wait_until(lambda: (got := _stored(store, ids)) and {k[0] for k in got} == ids and got, 30, 0.2,
                           "a first reading of every meter in InfluxDB")  # fmt: skip
        t1 = max(k[2] for k in first)
        clock.advance(3 * 3600)  # three hours of load, integrated by each meter at its next read
        after = {s.id: sim.meter(s.address).registers() for s in specs}
        wait_until(lambda: int(time.time()) > t1, 5, 0.05, "the next second (readings are keyed by second)")
        gw.poll_all()
        both = wait_until(lambda: (g := _stored(store, ids)) and len({k[2] for k in g}) >= 2 and
                          len(g) == 2 * len(first) and g, 30, 0.2, "the second reading of every meter")  # fmt: skip
    finally:
        gw.stop()
        sim.stop()
        collector.stop()
    for s in specs:  # every value stored is exactly what the simulated meter served
        times = sorted({k[2] for k in both if k[0] == s.id})
        assert len(times) == 2, (s.id, times)
        for ts, regs in zip(times, (before[s.id], after[s.id]), strict=True):
            got = {q: v for (m, q, t), v in both.items() if m == s.id and t == ts}
            assert set(got) == set(regs), s.id
            for q, v in regs.items():
                assert got[q] == pytest.approx(v, rel=1e-6, abs=1e-9), (s.id, q)
                if QUANTITIES[q].cumulative:
                    assert got[q] == v, (s.id, q)  # registers are integers of a step: exact
    settings = parse_accounting(cfg)
    lo, hi = (t1 // 3600 - 1) * 3600, (max(k[2] for k in both) // 3600 + 2) * 3600
    for s in specs:
        kind = MeterKind(s.extra["kind"])
        reg = REGISTER[kind]
        out = service.consumption_series(store, cfg, settings, Scope("meter", s.id), "hour", lo, hi, now=hi)
        series = next(x for x in out["series"] if x["kind"] == kind.value)
        assert (series["quantity"], series["unit"]) == (reg, QUANTITIES[reg].unit)
        assert series["total"] == round(after[s.id][reg] - before[s.id][reg], 4), s.id
        assert series["total"] > 0
    by_building = service.consumption_series(
        store, cfg, settings, Scope("building", "dorm-1"), "day", lo, hi, now=hi
    )
    heat = next(x for x in by_building["series"] if x["kind"] == HEAT)  # heating and cooling meter together
    want = sum(
        after[m][REGISTER[MeterKind.HEAT]] - before[m][REGISTER[MeterKind.HEAT]]
        for m in ("h-cjt-1", "c-cjt-1")
    )
    assert heat["total"] == pytest.approx(round(want, 4), abs=1e-4)
    assert heat["cost"] is None  # no heat tariff is configured: no invented price
    store.close()


def test_captured_cjt188_heat_meter_vectors_store_their_quantities(make_config: Any, influxdb: Any) -> None:
    vectors = [v for v in json.loads(VECTORS.read_text(encoding="utf-8"))["vectors"]
               if v["direction"] == "response" and v["parsed"]["meter_type"] in ("20", "21", "22")]  # fmt: skip
    assert vectors, "the captured heat-meter replies are in tests/vectors/cjt188.json"
    cfg = make_config(influx=influxdb, data={
        "buildings": [{"id": "b1"}],
        "meters": [{"id": f"h-vec-{i}", "building": "b1", "kind": "heat"} for i in range(len(vectors))],
    })  # fmt: skip
    store = open_store(cfg)
    store.ensure_database()
    ts = int(time.time()) - 60
    for i, v in enumerate(vectors):
        e = v["expected"]
        driver = make_driver(
            "cjt188", f"h-vec-{i}", v["parsed"]["address"], {"meter_type": "heat", "model": "jy-heat"}
        )
        decoded = driver.decode(driver.poll()[0], bytes.fromhex(v["hex"]))

        res = parse_payload(encode_senml(Reading(f"h-vec-{i}", q, x, ts) for q, x in decoded.values.items()),
                            f"campus/v1/meters/h-vec-{i}/readings", rules_from(cfg))  # fmt: skip
        assert not res.rejections, res.rejections
        assert store.write(res.readings).stored == len(res.readings)
        row = store.query(f'SELECT * FROM "heat" WHERE "meter" = \'h-vec-{i}\'')[0]
        got = dict(zip(row["columns"], row["values"][0], strict=True))
        assert got["heat_energy_kwh"] == convert(QUANTITIES["heat_energy_kwh"], e["current_heat"], "MWh")
        assert got["heat_volume_m3"] == e["cumulative_flow"]
        assert (got["supply_temp_c"], got["return_temp_c"]) == (e["supply_temp_C"], e["return_temp_C"])
        assert got["heat_power_w"] == 0.0 and got["heat_flow_m3h"] == 0.0
    store.close()


@pytest.mark.parametrize(("model", "profile"), [("example_heat", "example_heat_meter"),
                                                 ("example_gas_corrector", "example_gas_volume_corrector")])  # fmt: skip
def test_modbus_profiles_decode_the_simulated_meters(model: str, profile: str) -> None:
    meter = ModbusMeter(9, model=model, clock=SimClock(frozen=True))
    driver = make_driver("modbus-rtu", "m", "9", {"profile": profile})
    values: dict[str, float] = {}
    for req in driver.poll():
        values.update(driver.decode(req, asyncio.run(meter.respond(req.frame))).values)
    regs = meter.registers()
    assert set(values) == set(regs)
    kind = {QUANTITIES[q].kind for q in values}
    assert len(kind) == 1 and REGISTER[kind.pop()] in values
    for q, v in values.items():
        assert v == pytest.approx(regs[q], rel=1e-6), q
        if QUANTITIES[q].cumulative:
            assert v == regs[q], q


def test_simulator_spec_builds_gas_and_heat_meters() -> None:
    meters = build_meters(BusSpec.model_validate({"meters": [
        {"protocol": "cjt188", "address": "20000000000009", "meter_type": 0x21, "profile": "cooling"},
        {"protocol": "cjt188", "address": "30000000000009", "meter_type": 0x30},
        {"protocol": "modbus", "unit": 3, "model": "example_gas_corrector"},
    ]}))  # fmt: skip
    assert isinstance(meters[0], Cjt188HeatMeter) and "heat_energy_kwh" in meters[0].registers()
    assert set(meters[1].registers()) == {"gas_volume_m3"}
    assert "gas_volume_m3" in meters[2].registers()


# --- the wire format --------------------------------------------------------------------------------


def _rules() -> Any:
    cfg = parse_config({
        "buildings": [{"id": "b1"}],
        "meters": [{"id": "g1", "building": "b1", "kind": "gas", "max_rate": 50},
                   {"id": "h1", "building": "b1", "kind": "heat", "category": "04000", "max_rate": 500_000}],
    }, "test", environ={})  # fmt: skip
    return rules_from(cfg)


def _one(records: list[dict[str, Any]], meter: str) -> Any:
    return parse_payload(json.dumps(records), f"campus/v1/meters/{meter}/readings", _rules(), now=2e9)


def test_wire_accepts_gas_and_heat_records_in_their_units() -> None:
    t = 1.9e9
    res = _one([{"bn": "urn:campus:meter:h1:", "bt": t, "n": "heat_energy_kwh", "u": "GJ", "v": 36.0},
                {"n": "heat_power", "u": "kW", "v": 120.5}, {"n": "heat_flow", "u": "m3/h", "v": 5.2},
                {"n": "supply_temp", "u": "Cel", "v": 70.5}, {"n": "return_temp_c", "v": 50.25},
                {"n": "heat_volume_m3", "v": 1234.5}, {"n": "heat_energy", "u": "MWh", "v": 10.0, "t": 60}],
               "h1")  # fmt: skip
    assert not res.rejections, res.rejections
    got = {(r.quantity, r.ts): r.value for r in res.readings}
    assert got[("heat_energy_kwh", int(t))] == pytest.approx(10_000.0)  # 36 GJ = 10 MWh
    assert got[("heat_energy_kwh", int(t) + 60)] == 10_000.0
    assert got[("heat_power_w", int(t))] == 120_500.0
    assert got[("supply_temp_c", int(t))] == 70.5 and got[("return_temp_c", int(t))] == 50.25
    res = _one(
        [
            {"meter": "g1", "ts": t, "gas_volume_m3": 812.25, "gas_flow_m3h": 12.5},
            {"bn": "urn:campus:meter:g1:", "bt": t + 60, "n": "gas_pressure", "u": "bar", "v": 2.5},
            {"n": "gas_temp", "u": "Cel", "v": 11.5},
            {"n": "gas_volume_uncorrected_m3", "v": 330.0},
        ],
        "g1",
    )
    assert not res.rejections, res.rejections
    got = {r.quantity: r.value for r in res.readings}
    assert got == {"gas_volume_m3": 812.25, "gas_flow_m3h": 12.5, "gas_pressure_kpa": 250.0, "gas_temp_c": 11.5,
                   "gas_volume_uncorrected_m3": 330.0}  # fmt: skip


@pytest.mark.parametrize(
    ("meter", "record", "reason"),
    [
        ("h1", {"heat_energy_kwh": -1.0}, NEGATIVE_CUMULATIVE),
        ("h1", {"supply_temp_c": 500.0}, OUT_OF_RANGE),  # no district-heating water is that hot
        ("h1", {"heat_power_w": 600_000.0}, OUT_OF_RANGE),  # above the meter's max_rate
        ("g1", {"gas_flow_m3h": 80.0}, OUT_OF_RANGE),  # above the meter's max_rate
        ("g1", {"gas_pressure_kpa": 50_000.0}, OUT_OF_RANGE),
        ("g1", {"heat_energy_kwh": 5.0}, WRONG_KIND),
        ("h1", {"gas_volume_m3": 5.0}, WRONG_KIND),
        ("g1", {"volume_m3": 5.0}, WRONG_KIND),  # water's register is not a gas meter's
        ("h1", {"energy_kwh": 5.0}, WRONG_KIND),
    ],
)
def test_wire_refuses_implausible_or_misplaced_gas_and_heat_values(
    meter: str, record: dict, reason: str
) -> None:
    res = _one([{"meter": meter, "ts": 1.9e9, **record}], meter)
    assert not res.readings and [r.reason for r in res.rejections] == [reason], res.rejections


def test_wire_refuses_heat_and_gas_units_that_do_not_fit() -> None:
    res = _one([{"bn": "urn:campus:meter:h1:", "bt": 1.9e9, "n": "heat_energy_kwh", "u": "m3", "v": 1.0},
                {"n": "heat_energy", "v": 1.0}, {"n": "supply_temp_c", "u": "K", "v": 300.0}], "h1")  # fmt: skip
    assert not res.readings
    assert [r.reason for r in res.rejections] == [BAD_UNIT, UNKNOWN_QUANTITY, BAD_UNIT]


# --- configuration -----------------------------------------------------------------------------------


def test_config_takes_gas_and_heat_meters_with_their_sub_items() -> None:
    data = {"buildings": [{"id": "b1"}], "meters": [
        {"id": "g1", "building": "b1", "kind": "gas", "category": "03A00"},
        {"id": "h1", "building": "b1", "kind": "heat", "category": "04000"},
        {"id": "c1", "building": "b1", "kind": "heat", "category": "05000"},
    ]}  # fmt: skip
    assert [m.kind for m in parse_config(data, "t", environ={}).meters] == [
        MeterKind.GAS,
        MeterKind.HEAT,
        MeterKind.HEAT,
    ]
    for kind, cat in (("gas", "04000"), ("heat", "03000"), ("water", "03000"), ("electricity", "04000")):
        bad = {**data, "meters": [{"id": "x", "building": "b1", "kind": kind, "category": cat}]}
        with pytest.raises(ConfigError, match=f"category {cat} does not fit a {kind} meter"):
            parse_config(bad, "t", environ={})


def test_gateway_config_derives_the_kind_from_the_cjt188_meter_type() -> None:
    def gw(meter: dict[str, Any]) -> Any:
        return parse_gateway_config({"gateway": {"id": "g"}, "buses": [{"id": "b", "port": "loop://",
                                     "meters": [{"id": "m", "protocol": "cjt188", "address": "1", **meter}]}]},
                                    "gw.yaml", environ={})  # fmt: skip

    assert gw({"options": {"meter_type": "gas"}}).buses[0].meters[0].kind is MeterKind.GAS
    assert gw({"options": {"meter_type": "0x21"}}).buses[0].meters[0].kind is MeterKind.HEAT
    assert gw({}).buses[0].meters[0].kind is MeterKind.WATER
    with pytest.raises(ConfigError, match="meter type 'heat' is a heat meter, not water"):
        gw({"kind": "water", "options": {"meter_type": "heat"}})


def test_gas_and_heat_meters_are_judged_by_the_rules_for_any_meter() -> None:
    """A silent gas or heat meter is seen like any other; its waste gets no price (no gas or heat tariff)."""
    from api.alerts.config import parse_alerts
    from api.alerts.messages import cost_of
    from api.alerts.rules.base import Finding, Level, Subject
    from tests.test_rules import campus, registers, run, t

    meters = [
        {"id": "g1", "kind": "gas", "category": "03000"},
        {"id": "h1", "kind": "heat", "category": "04000"},
        {"id": "w1", "kind": "water"},
    ]
    cfg = campus(meters, alerts={"cost": {"water_per_m3": 4.0, "electricity_per_kwh": 1.0}})
    gap = (t(3, 10), t(4, 8))
    pts = {
        m: registers(lambda _ts: 2.0, t(0), t(6), skip=lambda ts: gap[0] <= ts < gap[1]) for m in ("g1", "h1")
    }
    pts["w1"] = registers(lambda _ts: 0.5, t(0), t(6))
    tr = run("data.offline", cfg, pts, t(2), t(6), step=900)
    assert sorted(s for _ts, s in tr.opens) == ["g1", "h1"]
    assert sorted(s for _ts, s in tr.clears) == ["g1", "h1"]
    acfg = parse_alerts(cfg)

    def waste(meter: str, unit: str) -> Finding:
        return Finding("spike.baseline", Subject("meter", meter, "b1"), Level.FIRING, t(3), since=t(3),
                       value=9.0, threshold=2.0, unit=unit, waste_per_day=5.0, waste_unit=unit, meter=meter)  # fmt: skip

    assert cost_of(cfg, acfg, waste("w1", "m3")).per_day == pytest.approx(20.0)
    assert cost_of(cfg, acfg, waste("g1", "m3")).per_day is None
    assert cost_of(cfg, acfg, waste("h1", "kWh")).per_day is None
