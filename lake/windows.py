"""The lake's commit window: rows wait up to this long before their file is committed (``commit_interval_seconds``).

A window divides an hour, so that no window straddles two hourly partitions.
"""

COMMIT_INTERVAL_S = 300
SECONDS_PER_HOUR = 3600


def divides_an_hour(seconds: int) -> bool:
    return seconds > 0 and SECONDS_PER_HOUR % seconds == 0
