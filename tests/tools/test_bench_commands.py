"""``tools.bench_commands``: one row per command, each with its wall time and its ratio to ``python -c pass``."""

import re

from tools.bench_commands import main

ROW = re.compile(r"  (?P<name>.+?) +(?P<seconds>\d+\.\d\d) +(?P<ratio>\d+\.\d)  (yes|NO)")


def test_each_command_gets_a_row_with_its_time_beside_the_interpreter_start(capsys):
    assert main(["--repeat", "1"]) == 0

    rows = [ROW.fullmatch(line) for line in capsys.readouterr().out.splitlines()[2:]]
    assert all(rows)
    assert [row["name"] for row in rows] == [
        "python -c pass",
        "profilestream --help",
        "profilestream validate FILE",
        "profilestream profile get",
        "profilestream identity get",
    ]
    assert float(rows[0]["ratio"]) == 1.0
    assert all(float(row["seconds"]) > 0 for row in rows)
