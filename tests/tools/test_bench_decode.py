"""``tools.bench_decode`` times decode and validate over the copies it makes and prints both figures."""

from __future__ import annotations

import re

from tools.bench_decode import main


def test_it_prints_the_cpu_per_message_of_decode_and_validate(capsys):
    main(["--copies", "1", "--rounds", "1"])

    out = capsys.readouterr().out
    assert re.search(r"^input: 2500 messages \(1 copies of stream\.jsonl\), \d+ entities decoded$", out, re.MULTILINE)
    figures = re.findall(r"^(decode|validate): +(\d+\.\d) µs of CPU per message", out, re.MULTILINE)
    assert [name for name, _ in figures] == ["decode", "validate"]
    assert all(float(value) > 0 for _, value in figures)
