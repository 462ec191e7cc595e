"""The wheel: ``python -m build``, installed into a new virtual environment, run from outside the repo.

Package data goes missing silently (a glob that matches nothing builds fine), so the test compares
every non-Python file of the source packages with the installed copy and then uses them: meter
profiles, the console's catalogues, the Alembic migrations, the CLI. The new environment has no
system site packages and the repository is not on its path; the wheel is installed with
``--no-index --no-deps`` and the dependencies are this environment's, reached through a path entry,
so the test needs no network. That the wheel's declared requirements are met by them is checked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("campusmon", "collectors", "api", "gateway", "firmware_sim")


def run(argv: list[str | Path], cwd: Path, timeout: float = 120, **kw: object) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "CAMPUSMON_", "VIRTUAL_ENV"))}
    env.update(kw.pop("env", {}))  # type: ignore[arg-type]
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def source_copy(dest: Path) -> Path:
    """What a clean clone holds for the build: pyproject, README and the packages (no caches)."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def data_files(top: Path) -> dict[str, bytes]:
    """Every non-Python file of the packages under ``top``, by path relative to it."""
    out = {}
    for pkg in PACKAGES:
        for p in (top / pkg).rglob("*"):
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts:
                out[str(p.relative_to(top))] = p.read_bytes()
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """Build sdist and wheel (the wheel from the sdist), then install the wheel into a new venv."""
    base = tmp_path_factory.mktemp("wheel")
    (base / "src").mkdir()
    src = source_copy(base / "src")
    dist = base / "dist"
    # No build isolation: the build backend (setuptools, a dev dependency) is already here and the
    # test does not reach PyPI.
    b = run([sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, src], cwd=base, timeout=240)
    assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-3000:]
    wheels = list(dist.glob("campusmon-*-py3-none-any.whl"))
    assert len(wheels) == 1 and list(dist.glob("campusmon-*.tar.gz")), list(dist.iterdir())

    venv = base / "venv"
    v = run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=base)
    assert v.returncode == 0, v.stderr
    py = venv / "bin" / "python"
    site = Path(
        run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=base).stdout.strip()
    )
    assert site.is_dir() and str(site).startswith(str(venv))
    # The dependencies: this environment's site-packages as a plain path entry (a directory named
    # in a .pth file is added to sys.path; the .pth files inside it, such as the editable install's
    # hook to the repository, are not run).
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz-campusmon-deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    i = run(
        [sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-index", "--no-deps", wheels[0]],
        cwd=base,
        timeout=240,
    )
    assert i.returncode == 0, i.stdout + i.stderr
    work = base / "work"  # an empty directory as cwd: nothing importable from here
    work.mkdir()
    return {"venv": venv, "py": py, "site": site, "work": work, "wheel": wheels[0]}


def test_packages_import_from_the_installed_copy_not_the_repository(installed) -> None:
    code = "import json, importlib; print(json.dumps({m: importlib.import_module(m).__file__ for m in %r}))"
    r = run([installed["py"], "-c", code % (PACKAGES,)], cwd=installed["work"])
    assert r.returncode == 0, r.stderr
    for mod, path in json.loads(r.stdout).items():
        assert Path(path).is_relative_to(installed["site"]), (mod, path)
    r = run(
        [installed["py"], "-c", "import sys; print(sys.flags.no_site, sys.prefix)"], cwd=installed["work"]
    )
    assert r.stdout.split() == ["0", str(installed["venv"])]


def test_every_data_file_of_the_packages_ships(installed) -> None:
    """Templates, static files, catalogues, meter profiles, migrations' template, simulator buses."""
    source, shipped = data_files(ROOT), data_files(installed["site"])
    assert set(source) - set(shipped) == set(), "not in the wheel"
    assert {k for k in source if source[k] != shipped[k]} == set()
    kinds = {
        "api/templates/console/": ".html",
        "api/static/console/": ".js",
        "api/locale/zh/LC_MESSAGES/": ".po",
        "gateway/profiles/": ".yaml",
        "firmware_sim/serial/buses/": ".yaml",
        "campusmon/migrations/": ".mako",
    }
    for where, suffix in kinds.items():
        assert any(k.startswith(where) and k.endswith(suffix) for k in shipped), where
    versions = {p.name for p in (installed["site"] / "campusmon" / "migrations" / "versions").glob("*.py")}
    assert versions and versions == {p.name for p in (ROOT / "campusmon/migrations/versions").glob("*.py")}


def test_the_wheels_requirements_are_met(installed) -> None:
    code = """
import json, sys
from importlib.metadata import PathDistribution, PackageNotFoundError, version
from pathlib import Path
from packaging.requirements import Requirement
dist = PathDistribution(next(Path(sys.argv[1]).glob("campusmon-*.dist-info")))
unmet, checked = [], []
for line in dist.requires or []:
    r = Requirement(line)
    if r.marker is not None and not r.marker.evaluate({"extra": ""}):
        continue
    try:
        v = version(r.name)
    except PackageNotFoundError:
        v = None
    checked.append(r.name)
    if v is None or not r.specifier.contains(v, prereleases=True):
        unmet.append(f"{r} (have {v})")
print(json.dumps({"checked": checked, "unmet": unmet}))
"""
    r = run([installed["py"], "-c", code, installed["site"]], cwd=installed["work"])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["unmet"] == [] and {"fastapi", "paho-mqtt", "alembic"} <= set(out["checked"])


def test_the_cli_runs_from_the_wheel(installed, tmp_path) -> None:
    exe = installed["venv"] / "bin" / "campusmon"
    assert exe.is_file()
    r = run([exe, "--help"], cwd=installed["work"])
    assert r.returncode == 0, r.stderr
    for command in ("collector", "api", "worker", "gateway", "demo", "config", "backup"):
        assert command in r.stdout, command
    r = run([exe, "demo", "--help"], cwd=installed["work"])
    assert r.returncode == 0 and "Usage" in r.stdout, r.stdout + r.stderr
    cfg = tmp_path / "campus.yaml"
    shutil.copy2(ROOT / "deploy" / "campus.yaml", cfg)
    r = run([exe, "config", "check", "-c", cfg], cwd=installed["work"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "e-dorm-1-main" in r.stdout or "meters" in r.stdout, r.stdout
    # A config with a mistake is refused by the installed copy as well (the check can fail).
    cfg.write_text(cfg.read_text().replace("timezone: Asia/Shanghai", "timezone: Mars/Olympus"))
    r = run([exe, "config", "check", "-c", cfg], cwd=installed["work"])
    assert r.returncode == 2 and "Mars/Olympus" in r.stderr, r.stdout + r.stderr


def test_installed_data_is_usable(installed, tmp_path) -> None:
    """Profiles parse, catalogues compile, migrations build a database: from the installed copy."""
    code = """
import json
from gateway.protocols.modbus import PROFILE_DIR, load_profile, profile_names
from api.console.i18n import LOCALE_DIR, translations
names = profile_names()
for n in names:
    load_profile(n)
print(json.dumps({"profiles": names, "profile_dir": str(PROFILE_DIR), "locale_dir": str(LOCALE_DIR),
                  "zh_messages": len(translations("zh")._catalog)}))
"""
    r = run([installed["py"], "-c", code], cwd=installed["work"])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["profiles"]) == len(list((ROOT / "gateway/profiles").glob("*.yaml")))
    assert Path(out["profile_dir"]).is_relative_to(installed["site"])
    assert Path(out["locale_dir"]).is_relative_to(installed["site"])
    assert out["zh_messages"] > 10

    exe = installed["venv"] / "bin" / "campusmon"
    cfg = tmp_path / "campus.yaml"
    shutil.copy2(ROOT / "deploy" / "campus.yaml", cfg)
    env = {"CAMPUSMON_DATABASE__URL": f"sqlite:///{tmp_path / 'campusmon.sqlite'}"}
    r = run([exe, "db", "upgrade", "-c", cfg], cwd=installed["work"], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run([exe, "db", "current", "-c", cfg], cwd=installed["work"], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    heads = sorted(p.name.split("_")[0] for p in (ROOT / "campusmon/migrations/versions").glob("0*.py"))
    lines = dict(line.split(":", 1) for line in r.stdout.splitlines() if ":" in line)
    assert lines["database"].strip() == lines["newest"].strip() == heads[-1], r.stdout
