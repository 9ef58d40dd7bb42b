"""The pipeline's Beam metrics: one namespace, and every name a stage counts under, defined here once for the stages
that count and for the run summary (:mod:`pipelines.summary`) that reads them. Names of one figure per dataset, code
or bucket are made by the functions below; how failed records are counted by code is :func:`count_failure`.
"""

from __future__ import annotations

from typing import Final

from apache_beam.metrics import Metrics

from core.records import FailedRecord

NAMESPACE: Final = "profilestream"

# ReadReplay: messages read from a replay.
REPLAY_MESSAGES: Final = "replay_messages"
# Decode: messages in, the entities split from them, and what failed before it could be split.
MESSAGES: Final = "messages"
DECODED_ENTITIES: Final = "decoded_entities"
DECODE_FAILED: Final = "decode_failed"
# Validate.
VALID: Final = "valid"
VALIDATE_FAILED: Final = "validate_failed"
# StitchIdentities: records stitched, identities rejected, and records dropped for carrying an identity on the
# suppression list (privacy.suppression), which Validate had counted valid.
STITCHED: Final = "stitched"
IDENTITIES_REJECTED: Final = "identities_rejected"
SUPPRESSED: Final = "suppressed"
# MergeProfiles: profile views written, writes that lost a race, and how fresh each record's write was (a
# distribution, and one counter per bucket of FRESHNESS_BUCKETS_MS, bounds in ms, from which the summary takes
# percentiles).
PROFILES_WRITTEN: Final = "profiles_written"
PROFILE_WRITE_CONFLICTS: Final = "profile_write_conflicts"
PROFILE_FRESHNESS_MS: Final = "profile_freshness_ms"
FRESHNESS_BUCKETS_MS: Final = (10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000)
# WriteToLake: rows not written because the pane or the lake held them already, over every dataset.
DUPLICATES: Final = "duplicates"
# PublishFailedRecords.
DEAD_LETTERED: Final = "dead_lettered"

_FAILED_PREFIX = "failed."


def failed_with(code: str) -> str:
    """The counter of failed records that carry ``code``."""
    return f"{_FAILED_PREFIX}{code}"


def code_counted_by(name: str) -> str | None:
    """The code a :func:`failed_with` counter counts; None for any other counter."""
    return name.removeprefix(_FAILED_PREFIX) if name.startswith(_FAILED_PREFIX) else None


def duplicates_in(dataset: str) -> str:
    """The counter of ``dataset``'s rows not written because the pane or the lake held them already."""
    return f"{DUPLICATES}.{dataset}"


def lake_files_of(dataset: str) -> str:
    """The counter of ``dataset``'s lake files committed."""
    return f"lake_files.{dataset}"


def lake_rows_of(dataset: str) -> str:
    """The counter of the rows ``dataset``'s committed lake files hold."""
    return f"lake_rows.{dataset}"


def lake_lag_ms_of(dataset: str) -> str:
    """The distribution of the age of each of ``dataset``'s panes' oldest row when its files land."""
    return f"lake_lag_ms.{dataset}"


def identity_changes_of(kind: str) -> str:
    """The counter of identity changes of ``kind``."""
    return f"identity_changes.{kind}"


def freshness_bucket(freshness_ms: float) -> str:
    """The counter a profile write of this freshness is counted under (the smallest bound it does not exceed)."""
    for bound in FRESHNESS_BUCKETS_MS:
        if freshness_ms <= bound:
            return freshness_bucket_of(bound)
    return freshness_bucket_of(None)


def freshness_bucket_of(bound_ms: int | None) -> str:
    """The counter of the freshness bucket with upper bound ``bound_ms`` (None: beyond the last bound)."""
    return f"{PROFILE_FRESHNESS_MS}.le_{bound_ms if bound_ms is not None else 'inf'}"


def counter(name: str):
    return Metrics.counter(NAMESPACE, name)


def distribution(name: str):
    return Metrics.distribution(NAMESPACE, name)


def count_failure(failed: FailedRecord) -> None:
    """Counts a failed record once under each code it carries, as ``failed.<CODE>``."""
    for code in dict.fromkeys(error.code for error in failed.errors):
        counter(failed_with(code)).inc()
