"""Refresh the browser libraries under api/static/vendor/ from the npm registry.

The console and the API documentation pages load nothing from a CDN, so a campus network without
internet access still gets charts, partial updates and working /docs and /redoc. Each library is
fetched with ``npm pack`` (the registry tarball, integrity-checked by npm), the few files the pages
use are copied out with the package's licence, and VENDOR.md records name, version and licence.

    python scripts/vendor_assets.py            # the pinned versions below
    python scripts/vendor_assets.py --check    # exit 1 if a vendored file differs from the tarball

Only needed to change a version; installing campusmon never runs npm.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "api" / "static" / "vendor"


@dataclass(frozen=True)
class Lib:
    name: str
    version: str
    files: dict[str, str]  # path in the tarball (under package/) -> file name under vendor/<dir>/
    dir: str
    why: str


# Pinned on purpose: htmx 2 (htmx 4 changed attribute inheritance and event names), ECharts 5,
# ReDoc 2 (what FastAPI's get_redoc_html expects: a <redoc spec-url> element).
LIBS = (
    Lib(
        "htmx.org",
        "2.0.11",
        {"dist/htmx.min.js": "htmx.min.js", "LICENSE": "LICENSE"},
        "htmx",
        "partial page updates",
    ),
    Lib(
        "htmx-ext-sse",
        "2.2.4",
        {"dist/sse.min.js": "sse.min.js"},
        "htmx",
        "htmx Server-Sent Events extension",
    ),
    Lib(
        "echarts",
        "5.6.0",
        {"dist/echarts.min.js": "echarts.min.js", "LICENSE": "LICENSE"},
        "echarts",
        "charts",
    ),
    Lib(
        "swagger-ui-dist",
        "5.35.0",
        {
            "swagger-ui-bundle.js": "swagger-ui-bundle.js",
            "swagger-ui.css": "swagger-ui.css",
            "favicon-32x32.png": "favicon-32x32.png",
            "LICENSE": "LICENSE",
        },
        "swagger-ui",
        "/docs",
    ),
    Lib(
        "redoc",
        "2.5.4",
        {"bundles/redoc.standalone.js": "redoc.standalone.js", "LICENSE": "LICENSE"},
        "redoc",
        "/redoc",
    ),
)


def pack(lib: Lib, dest: Path) -> tuple[Path, dict[str, str]]:
    """The registry tarball of ``lib`` in ``dest`` and npm's metadata for it."""
    out = subprocess.run(
        ["npm", "pack", f"{lib.name}@{lib.version}", "--json", "--pack-destination", str(dest)],
        check=True,
        capture_output=True,
        text=True,
    )
    info = json.loads(out.stdout)[0]
    return dest / info["filename"], info


def extract(lib: Lib, tgz: Path) -> dict[str, bytes]:
    with tarfile.open(tgz) as tar:
        names = {m.name.removeprefix("package/"): m for m in tar.getmembers() if m.isfile()}
        manifest = json.loads(tar.extractfile(names["package.json"]).read())  # type: ignore[union-attr]
        got = {}
        for src, name in lib.files.items():
            m = names.get(src)
            if m is None and src == "LICENSE":
                m = next((v for k, v in names.items() if k.upper().startswith("LICENSE")), None)
            if m is None:
                raise SystemExit(f"{lib.name}@{lib.version}: {src} is not in the tarball")
            got[name] = tar.extractfile(m).read()  # type: ignore[union-attr]
    got[".license"] = str(manifest.get("license", "see LICENSE")).encode()
    return got


def vendor_md(rows: list[tuple[Lib, str, dict[str, bytes]]]) -> str:
    lines = [
        "# Vendored browser libraries",
        "",
        "Served from `/static/vendor/` so the console, `/docs` and `/redoc` work without internet access.",
        "Refresh with `python scripts/vendor_assets.py` (uses `npm pack` against the npm registry; edit the",
        "pinned versions in that script). Nothing here is built: these are the packages' own distribution files.",
        "",
        "| package | version | licence | used for | files (sha256, first 16 hex) |",
        "|---|---|---|---|---|",
    ]
    for lib, lic, files in rows:
        fl = "<br>".join(
            f"`{lib.dir}/{n}` {hashlib.sha256(b).hexdigest()[:16]}"
            for n, b in files.items()
            if n != ".license"
        )
        lines.append(f"| {lib.name} | {lib.version} | {lic} | {lib.why} | {fl} |")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare only; write nothing")
    args = ap.parse_args()
    if shutil.which("npm") is None:
        raise SystemExit("npm is needed to refresh the vendored files (apt-get install npm)")
    rows = []
    differ = []
    with tempfile.TemporaryDirectory() as tmp:
        for lib in LIBS:
            tgz, _ = pack(lib, Path(tmp))
            files = extract(lib, tgz)
            lic = files[".license"].decode()
            rows.append((lib, lic, files))
            for name, data in files.items():
                if name == ".license":
                    continue
                target = VENDOR / lib.dir / (name if name != "LICENSE" else f"LICENSE-{lib.name}")
                if args.check:
                    if not target.exists() or target.read_bytes() != data:
                        differ.append(str(target.relative_to(ROOT)))
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                print(f"{lib.name}@{lib.version}: {target.relative_to(ROOT)} ({len(data)} bytes)")
    if args.check:
        for d in differ:
            print(f"differs from the registry tarball: {d}")
        return 1 if differ else 0
    # the LICENSE rows in VENDOR.md name the file as stored
    for lib, _, files in rows:
        if "LICENSE" in files:
            files[f"LICENSE-{lib.name}"] = files.pop("LICENSE")
    (VENDOR / "VENDOR.md").write_text(vendor_md(rows))
    print(f"wrote {(VENDOR / 'VENDOR.md').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
