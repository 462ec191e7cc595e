"""Check the console's message catalogues, or add new msgids to them (see api/console/i18n.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.console.i18n import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
