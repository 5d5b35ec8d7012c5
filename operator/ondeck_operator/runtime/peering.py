"""kopf's peering rule, so only one operator replica works at a time."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any


def is_active_peer(
    peering: Mapping[str, Any] | None, *, identity: str, priority: int, now: dt.datetime
) -> bool:
    """Whether this replica works, per kopf's peering rule: no live peer has a priority
    higher than or equal to ours (kopf pauses on a tie; priorities are random here)."""
    if peering is None:
        return True
    for peer, info in (peering.get("status") or {}).items():
        if peer == identity or not isinstance(info, Mapping):
            continue
        try:
            seen = dt.datetime.fromisoformat(str(info.get("lastseen")))
            alive = seen + dt.timedelta(seconds=int(info.get("lifetime", 60))) > now
        except (TypeError, ValueError):
            continue
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=dt.UTC)
            alive = seen + dt.timedelta(seconds=int(info.get("lifetime", 60))) > now
        if alive and int(info.get("priority", 0)) >= priority:
            return False
    return True
