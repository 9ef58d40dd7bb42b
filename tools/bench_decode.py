"""CPU per message of the decode and validate stages alone, over copies of the sample stream.

The messages are read first (the replay reader is not timed); then :func:`~messages.decoding.decode_message` runs
over all of them, then :func:`~schemas.validation.validate_decoded` over every entity decoded. Each figure is the
best of ``--rounds`` rounds of process CPU time, divided by the number of messages (not entities), with the
garbage collector off while a round runs.

    python -m tools.bench_decode [--copies N] [--rounds N] [--input FILE]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

from core.records import FailedRecord
from messages.decoding import decode_message
from messages.replay_files import read_replay_file
from schemas.registry import SchemaRegistry
from schemas.validation import validate_decoded
from tools.bench import SAMPLE, make_input


def _best_cpu_seconds(work, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        gc.collect()
        gc.disable()
        try:
            started = time.process_time()
            work()
            best = min(best, time.process_time() - started)
        finally:
            gc.enable()
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=5, help="copies of the sample stream")
    parser.add_argument("--rounds", type=int, default=5, help="rounds to time; the best one counts")
    parser.add_argument("--input", type=Path, default=SAMPLE)
    args = parser.parse_args(argv)
    registry = SchemaRegistry.load()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "input.jsonl"
        make_input(args.input, args.copies, path)
        messages = list(read_replay_file(str(path), clock=time.time_ns))
    avro_schema_for = registry.avro_schema_for
    decoded = [output for message in messages for output in decode_message(message, avro_schema_for)]
    entities = [output for output in decoded if not isinstance(output, FailedRecord)]

    def decode_all() -> None:
        for message in messages:
            decode_message(message, avro_schema_for)

    def validate_all() -> None:
        for entity in entities:
            validate_decoded(entity, registry)

    decode_s = _best_cpu_seconds(decode_all, args.rounds)
    validate_s = _best_cpu_seconds(validate_all, args.rounds)
    count = len(messages)
    print(f"input: {count} messages ({args.copies} copies of {args.input.name}), {len(entities)} entities decoded")
    print(f"decode:   {decode_s / count * 1e6:7.1f} µs of CPU per message")
    per_entity = validate_s / len(entities) * 1e6
    print(f"validate: {validate_s / count * 1e6:7.1f} µs of CPU per message ({per_entity:.1f} per entity)")


if __name__ == "__main__":
    main()
