"""What users type on the command line or into a pipeline run's arguments, read into values."""

from __future__ import annotations

from datetime import UTC, datetime

from components.errors import ConfigError


def parse_time(value: str | None, what: str) -> datetime | None:
    """An ISO date or date and time from a user (UTC unless it names a zone); None or empty gives None."""
    if not value:
        return None
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{what} {value!r} is not a date (YYYY-MM-DD) or date and time") from None
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp
