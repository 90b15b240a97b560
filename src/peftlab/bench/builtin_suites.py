"""The built-in suites (``bench/suites/*.yaml``), listed without the suite machinery (which needs torch), so
``peftlab bench --help`` names them at once."""

from __future__ import annotations

from pathlib import Path

SUITES_DIR = Path(__file__).parent / "suites"


def available_suites() -> list[str]:
    return sorted(path.stem for path in SUITES_DIR.glob("*.yaml"))
