"""Where the real benchmark files are: $PEFTLAB_DATA, else ../shared/data beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def real_data_root() -> Path:
    for candidate in (os.environ.get("PEFTLAB_DATA"), REPO.parent / "shared" / "data"):
        if candidate and Path(candidate, "glue").is_dir():
            return Path(candidate).resolve()  # tests that change directory still find it
    pytest.skip("real data not found: set PEFTLAB_DATA to the data folder (glue/, mmlu/, wmt16_en_ro/, alpaca/)")
