"""Every data test runs against an empty world: no $RANDSPARSE_DATA, a temporary system folder and cache.

Tests marked `real_data` keep the machine's real locations (they look for the installed datasets).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from randsparse.data import lookup


@pytest.fixture(autouse=True)
def isolated_data_dirs(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path | None:
    """Point the system folder and the cache into `tmp_path` (returned: `tmp_path / "system"`)."""
    if request.node.get_closest_marker("real_data"):
        return None
    system = tmp_path / "system"
    monkeypatch.delenv(lookup.ENV_VAR, raising=False)
    monkeypatch.setattr(lookup, "SYSTEM_DATA_DIRS", (system,))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return system
