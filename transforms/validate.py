"""Validate: decoded entities in, valid records and failed records out.

Input: ``PCollection[DecodedEntity]``. Outputs (:class:`ValidateResult`): ``valid``, ``PCollection[ValidRecord]``
in runtime names, bound for their dataset; ``failed``, ``PCollection[FailedRecord]`` with every violation
(:mod:`schemas.validation` lists the codes). Nothing raises out of the DoFn: an unexpected error becomes a failed
record with code ``VALIDATE.INTERNAL``.

Metrics (namespace ``profilestream``): ``valid``, ``validate_failed`` and ``failed.<CODE>`` for each code a failed
record carries.
"""

from __future__ import annotations

from typing import NamedTuple

import apache_beam as beam

from core.records import DecodedEntity, FailedRecord, RecordError, ValidRecord
from schemas.registry import SchemaRegistry
from schemas.validation import DEFAULT_POLICY, ValidationPolicy, validate_decoded
from transforms.metrics import VALID, VALIDATE_FAILED, count_failure, counter
from transforms.shared_registry import SharedRegistry, shared_registry

INTERNAL = "VALIDATE.INTERNAL"
_FAILED = "failed"


class ValidateResult(NamedTuple):
    valid: beam.PCollection
    failed: beam.PCollection


class _ValidateFn(beam.DoFn):
    def __init__(self, registry: SharedRegistry, policy: ValidationPolicy) -> None:
        self._registry = registry
        self._policy = policy
        self._valid = counter(VALID)
        self._failed = counter(VALIDATE_FAILED)

    def process(self, decoded: DecodedEntity):
        try:
            outcome = validate_decoded(decoded, self._registry.load(), self._policy)
        except Exception as error:  # a bug must not lose the record: it leaves as a failed one
            outcome = FailedRecord.of_entity(decoded, "validate", (RecordError(INTERNAL, "", repr(error)),))
        if isinstance(outcome, ValidRecord):
            self._valid.inc()
            yield outcome
        else:
            self._failed.inc()
            count_failure(outcome)
            yield beam.pvalue.TaggedOutput(_FAILED, outcome)


class Validate(beam.PTransform):
    """Checks each entity against its ingestion schema; see the module docstring."""

    def __init__(self, registry: SchemaRegistry | SharedRegistry, *, policy: ValidationPolicy = DEFAULT_POLICY) -> None:
        super().__init__()
        self._registry = shared_registry(registry)
        self._policy = policy

    def expand(self, entities: beam.PCollection) -> ValidateResult:
        outputs = entities | "CheckEntities" >> beam.ParDo(_ValidateFn(self._registry, self._policy)).with_outputs(
            _FAILED, main="valid"
        )
        return ValidateResult(valid=outputs.valid, failed=outputs[_FAILED])
