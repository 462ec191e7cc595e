"""A corpus of bad payloads, each with the reason it must be refused for (shared by unit and e2e tests)."""

from __future__ import annotations

import json
import time

NOW = int(time.time())
U = "urn:campus:meter:"


def corpus(meter: str = "e-dorm-1", water: str = "w-dorm-1", now: int = NOW) -> list[tuple[str, bytes, str]]:
    """(label, payload, expected reason) for payloads sent to the meter's own topic or a gateway topic."""
    t = now - 60
    j = lambda o: json.dumps(o).encode()  # noqa: E731
    return [
        (
            "truncated json",
            b'[{"bn":"' + U.encode() + meter.encode() + b':","n":"energy_kwh","v":1',
            "malformed_json",
        ),
        ("not json", b"hello meter", "malformed_json"),
        ("binary garbage", bytes(range(256)), "malformed_json"),
        ("empty payload", b"", "malformed_json"),
        ("trailing comma", b'{"meter":"x","ts":1,}', "malformed_json"),
        ("json string", j("energy_kwh=5"), "bad_structure"),
        ("json number", b"42", "bad_structure"),
        ("json null", b"null", "bad_structure"),
        ("empty array", b"[]", "bad_structure"),
        ("array of numbers", b"[1,2,3]", "bad_structure"),
        ("flat without quantities", j({"meter": meter, "ts": t}), "bad_structure"),
        ("senml record without value or name", j([{"x": 1}]), "bad_structure"),
        ("NaN literal", f'[{{"bn":"{U}{meter}:","n":"power_w","v":NaN,"t":{t}}}]'.encode(), "non_finite"),
        ("Infinity literal", f'{{"meter":"{meter}","ts":{t},"power_w":Infinity}}'.encode(), "non_finite"),
        (
            "-Infinity register",
            f'{{"meter":"{meter}","ts":{t},"energy_kwh":-Infinity}}'.encode(),
            "non_finite",
        ),
        ("huge exponent", f'{{"meter":"{meter}","ts":{t},"power_w":1e999}}'.encode(), "non_finite"),
        (
            "unknown quantity senml",
            j([{"bn": f"{U}{meter}:", "n": "temperature_c", "v": 21, "t": t}]),
            "unknown_quantity",
        ),
        ("unknown quantity flat", j({"meter": meter, "ts": t, "kw": 3}), "unknown_quantity"),
        ("unknown meter", j({"meter": "no-such-meter", "ts": t, "power_w": 3}), "unknown_meter"),
        ("meter id with space", j({"meter": "bad meter", "ts": t, "power_w": 3}), "bad_meter_id"),
        ("meter id too long", j({"meter": "m" * 80, "ts": t, "power_w": 3}), "bad_meter_id"),
        ("urn without meter", j([{"bn": f"{U}:", "n": "power_w", "v": 3, "t": t}]), "missing_meter"),
        ("name outside urn", j([{"n": "other:thing:power_w", "v": 3, "t": t}]), "missing_meter"),
        ("water quantity on electricity meter", j({"meter": meter, "ts": t, "volume_m3": 3}), "wrong_kind"),
        ("electricity quantity on water meter", j({"meter": water, "ts": t, "energy_kwh": 3}), "wrong_kind"),
        ("wrong unit", j([{"bn": f"{U}{meter}:", "n": "energy_kwh", "u": "m3", "v": 3, "t": t}]), "bad_unit"),
        (
            "unknown unit",
            j([{"bn": f"{U}{meter}:", "n": "power_w", "u": "horsepower", "v": 3, "t": t}]),
            "bad_unit",
        ),
        (
            "unit not a string",
            j([{"bn": f"{U}{meter}:", "n": "power_w", "u": 5, "v": 3, "t": t}]),
            "bad_unit",
        ),
        ("string value", j({"meter": meter, "ts": t, "power_w": "3.5"}), "bad_value"),
        ("boolean value", j({"meter": meter, "ts": t, "power_w": True}), "bad_value"),
        ("senml string value", j([{"bn": f"{U}{meter}:", "n": "power_w", "vs": "on", "t": t}]), "bad_value"),
        ("power factor above 1", j({"meter": meter, "ts": t, "power_factor": 1.7}), "bad_value"),
        ("negative voltage", j({"meter": meter, "ts": t, "voltage_v": -230}), "bad_value"),
        ("negative register", j({"meter": meter, "ts": t, "energy_kwh": -5}), "negative_cumulative"),
        ("negative water register", j({"meter": water, "ts": t, "volume_m3": -0.1}), "negative_cumulative"),
        ("no timestamp flat", j({"meter": meter, "power_w": 3}), "missing_timestamp"),
        ("no timestamp senml", j([{"bn": f"{U}{meter}:", "n": "power_w", "v": 3}]), "missing_timestamp"),
        (
            "relative senml time",
            j([{"bn": f"{U}{meter}:", "n": "power_w", "v": 3, "t": -60}]),
            "missing_timestamp",
        ),
        (
            "naive iso time",
            j({"meter": meter, "ts": "2026-01-01T00:00:00", "power_w": 3}),
            "missing_timestamp",
        ),
        ("garbage time string", j({"meter": meter, "ts": "yesterday", "power_w": 3}), "missing_timestamp"),
        ("timestamp in milliseconds", j({"meter": meter, "ts": t * 1000, "power_w": 3}), "timestamp_future"),
        ("far future", j({"meter": meter, "ts": now + 86400 * 365, "power_w": 3}), "timestamp_future"),
        ("before 2000", j({"meter": meter, "ts": 900000000, "power_w": 3}), "timestamp_too_old"),
    ]
