"""The console's message catalogues: loading, per-language formatting, and a completeness check.

Catalogues are the ``.po`` files under ``api/locale/<lang>/LC_MESSAGES/``; they are compiled in
memory when first used, so an installed wheel needs no build step and no ``.mo`` file can drift
from its ``.po``. Every visible string of the console is a msgid; ``missing_messages()`` extracts
them from the templates and the console's Python with Babel's own extractors and names any that a
catalogue lacks, which the test suite turns into a failure.

    python scripts/i18n.py            # list what is missing (exit 1 if anything is)
    python scripts/i18n.py --update   # add new msgids to both catalogues (English filled in)
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_date, format_datetime, format_time
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po
from babel.numbers import format_decimal, format_percent
from babel.support import Translations

API = Path(__file__).resolve().parent.parent
LOCALE_DIR = API / "locale"
TEMPLATES = API / "templates"
CONSOLE_PY = Path(__file__).resolve().parent
LANGUAGES = ("zh", "en")
LANGUAGE_NAMES = {"zh": "中文", "en": "English"}
BABEL_LOCALE = {"zh": "zh_Hans_CN", "en": "en_GB"}
DOMAIN = "messages"
# Call names that mark a msgid: _("…") in templates and code, N_("…") for text translated later.
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None}


def N_(text: str) -> str:
    """Marks ``text`` for extraction; it is translated where it is shown."""
    return text


def po_path(lang: str) -> Path:
    return LOCALE_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po"


@lru_cache(maxsize=len(LANGUAGES))
def translations(lang: str) -> Translations:
    """The compiled catalogue of ``lang`` (read once per process)."""
    with po_path(lang).open("rb") as fh:
        catalog = read_po(fh, locale=lang)
    buf = io.BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return Translations(buf, domain=DOMAIN)


def gettext_for(lang: str) -> Any:
    """``_(msgid, **values)``: the translation, with ``%(name)s`` placeholders filled in."""
    t = translations(lang)

    def _(msgid: str, **values: Any) -> str:
        text = t.gettext(msgid)
        return text % values if values else text

    return _


# --- formatting ------------------------------------------------------------------------------

UNIT_MSGIDS = {
    "kWh": N_("kWh"),
    "m3": N_("m³"),
    "kW": N_("kW"),
    "W": N_("W"),
    "m3/h": N_("m³/h"),
    "kg": N_("kg"),
    "kWh/m2": N_("kWh/m²"),
    "m3/m2": N_("m³/m²"),
    "kWh/person": N_("kWh/person"),
    "m3/person": N_("m³/person"),
    "L/person/day": N_("L/person/day"),
    "kWh/person/day": N_("kWh/person/day"),
    "% vs target": N_("% vs target"),
    "CNY": N_("CNY"),
}


@dataclass(frozen=True)
class Formatter:
    """Numbers, money, dates and units the way the page's language writes them."""

    lang: str
    tz: ZoneInfo

    @property
    def locale(self) -> Locale:
        return Locale.parse(BABEL_LOCALE[self.lang])

    def num(self, v: float | int | None, digits: int = 1, dash: str = "—") -> str:
        if v is None:
            return dash
        pattern = "#,##0" + ("." + "0" * digits if digits > 0 else "")
        return format_decimal(v, format=pattern, locale=self.locale)

    def pct(self, share: float | None, digits: int = 0) -> str:
        """``share`` is 0..1 (0.5 → 50 %)."""
        if share is None:
            return "—"
        pattern = "#,##0" + ("." + "0" * digits if digits > 0 else "") + "%"
        return format_percent(share, format=pattern, locale=self.locale)

    def money(self, v: float | None, currency: str = "CNY") -> str:
        if v is None:
            return "—"
        return f"{self.num(v, 2)} {self.unit(currency)}"

    def unit(self, u: str) -> str:
        return gettext_for(self.lang)(UNIT_MSGIDS[u]) if u in UNIT_MSGIDS else u

    def qty(self, v: float | None, u: str, digits: int = 1) -> str:
        return "—" if v is None else f"{self.num(v, digits)} {self.unit(u)}"

    def _dt(self, when: int | float | str | datetime) -> datetime:
        if isinstance(when, str):
            when = datetime.fromisoformat(when)
        if isinstance(when, int | float):
            when = datetime.fromtimestamp(when, UTC)
        return when.astimezone(self.tz)

    def datetime(self, when: int | float | str | datetime | None, fmt: str = "short") -> str:
        if when is None:
            return "—"
        return format_datetime(self._dt(when), format=fmt, locale=self.locale)

    def time(self, when: int | float | str | datetime | None, fmt: str = "short") -> str:
        if when is None:
            return "—"
        return format_time(self._dt(when), format=fmt, locale=self.locale)

    def date(self, when: date | int | float | str | datetime | None, fmt: str = "medium") -> str:
        if when is None:
            return "—"
        d = when if isinstance(when, date) and not isinstance(when, datetime) else self._dt(when).date()
        return format_date(d, format=fmt, locale=self.locale)

    def month(self, label: str) -> str:
        """``YYYY-MM`` as the language names a month (2026年10月, October 2026)."""
        y, m = (int(x) for x in label.split("-"))
        return format_date(
            date(y, m, 1), format="yyyy MMMM" if self.lang == "en" else "y年M月", locale=self.locale
        )


# --- completeness ----------------------------------------------------------------------------


def _sources() -> Iterator[tuple[str, int, str]]:
    """(file, line, msgid) of every marked string of the console."""
    opts = {"extensions": "jinja2.ext.i18n", "silent": "false"}
    methods = [("console/**.html", "jinja2.ext:babel_extract")]
    for fn, line, msg, _c, _ctx in extract_from_dir(
        str(TEMPLATES), methods, {"console/**.html": opts}, keywords=KEYWORDS
    ):
        for m in msg if isinstance(msg, tuple) else (msg,):
            if m:
                yield f"api/templates/{fn}", line, m
    for fn, line, msg, _c, _ctx in extract_from_dir(
        str(CONSOLE_PY), [("**.py", "python")], keywords=KEYWORDS
    ):
        for m in msg if isinstance(msg, tuple) else (msg,):
            if m:
                yield f"api/console/{fn}", line, m


def used_messages() -> dict[str, list[str]]:
    """Every msgid the console shows, with where it is used."""
    out: dict[str, list[str]] = {}
    for fn, line, m in _sources():
        out.setdefault(m, []).append(f"{fn}:{line}")
    return out


def _catalog(lang: str) -> Catalog:
    with po_path(lang).open("rb") as fh:
        return read_po(fh, locale=lang)


def missing_messages(extra: dict[str, list[str]] | None = None) -> list[tuple[str, str, str]]:
    """(language, msgid, where used) for each msgid without a translation in some catalogue.

    ``extra`` adds msgids found elsewhere (a browser test passes the strings it saw on a page).
    """
    used = used_messages()
    for k, v in (extra or {}).items():
        used.setdefault(k, []).extend(v)
    out = []
    for lang in LANGUAGES:
        cat = _catalog(lang)
        for msgid, where in sorted(used.items()):
            m = cat.get(msgid)
            if m is None or not m.string or m.fuzzy:
                out.append((lang, msgid, ", ".join(where[:3])))
    return out


def update_catalogues() -> dict[str, int]:
    """Add the msgids in use but absent to both ``.po`` files; English gets the msgid as its text."""
    used = used_messages()
    added = {}
    for lang in LANGUAGES:
        cat = _catalog(lang)
        n = 0
        for msgid, where in sorted(used.items()):
            if cat.get(msgid) is None:
                cat.add(
                    msgid,
                    msgid if lang == "en" else "",
                    locations=[(w.rsplit(":", 1)[0], 0) for w in where[:1]],
                )
                n += 1
        buf = io.BytesIO()
        write_po(buf, cat, width=110, omit_header=False, sort_output=True, include_lineno=False)
        po_path(lang).write_bytes(buf.getvalue())
        added[lang] = n
    translations.cache_clear()
    return added


def apply_translations(lang: str, texts: dict[str, str]) -> int:
    """Set the translations of existing or new msgids in the ``lang`` catalogue; the count changed."""
    cat = _catalog(lang)
    n = 0
    for msgid, text in texts.items():
        m = cat.get(msgid)
        if m is None:
            cat.add(msgid, text)
            n += 1
        elif m.string != text or m.fuzzy:
            m.string, m.flags = text, set(m.flags) - {"fuzzy"}
            n += 1
    buf = io.BytesIO()
    write_po(buf, cat, width=110, omit_header=False, sort_output=True, include_lineno=False)
    po_path(lang).write_bytes(buf.getvalue())
    translations.cache_clear()
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="check or update the console's message catalogues")
    ap.add_argument("--update", action="store_true", help="add new msgids to both catalogues")
    args = ap.parse_args(argv)
    if args.update:
        for lang, n in update_catalogues().items():
            print(f"{po_path(lang).relative_to(API.parent)}: {n} new msgid(s)")
    missing = missing_messages()
    for lang, msgid, where in missing:
        print(f"{lang}: no translation of {msgid!r} (used at {where})")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
