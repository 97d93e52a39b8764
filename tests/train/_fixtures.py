"""Files made by older releases (tests/fixtures/), copied where a test may change them."""

from __future__ import annotations

import shutil
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
V0_RUN_ID = "ce37d7ce5ea8053a"  # config_hash of run_v0_1_0 under release 0.1.0
V0_DENSE_ID = "70879a51e1add6f0"  # ... and of its dense baseline in study_v0_1_0


def copy_fixture(name: str, into: Path) -> Path:
    """A writable copy of tests/fixtures/`name` under `into`."""
    target = into / name
    shutil.copytree(FIXTURES / name, target)
    return target
