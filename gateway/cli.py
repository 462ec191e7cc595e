"""Command line of the serial side: frame decoding, the gateway process, the direct serial collector."""

from __future__ import annotations

import json
from enum import StrEnum

import typer

from gateway.frame import decode_frame

frame_app = typer.Typer(
    help="Decode meter frames (DL/T 645, CJ/T 188, Modbus RTU) for field work.", no_args_is_help=True
)


class FrameProtocol(StrEnum):
    AUTO = "auto"
    DLT645 = "dlt645"
    CJT188 = "cjt188"
    MODBUS_RTU = "modbus-rtu"


@frame_app.callback()
def frame_group() -> None:
    """Decode meter frames (DL/T 645, CJ/T 188, Modbus RTU) for field work."""


@frame_app.command("decode")
def frame_decode(
    hex_parts: list[str] = typer.Argument(..., metavar="HEX...", help="Frame bytes in hex, spaces optional."),
    protocol: FrameProtocol = typer.Option(
        FrameProtocol.AUTO, "--protocol", "-p", help="Protocol, or auto to guess."
    ),
) -> None:
    """Print one JSON object describing the frame; exit code 0 when it is valid, 1 when not."""
    result = decode_frame(protocol.value, " ".join(hex_parts))
    typer.echo(json.dumps(result, ensure_ascii=False))
    raise typer.Exit(0 if result["valid"] else 1)
