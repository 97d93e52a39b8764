"""`MetricRecord`: the base of the frozen metric records evaluations return, and their JSON-ready form."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any


class MetricRecord:
    """Base of a frozen dataclass of named metrics; `to_dict` gives ``{field: value}`` in field order."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)  # type: ignore[call-overload]  # every subclass is a dataclass
