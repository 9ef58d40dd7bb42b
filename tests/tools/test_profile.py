"""``make profile``: flame graphs of the reference loop and the ``--batch`` pipeline, and their hottest frames."""

import re

import pytest

from tools.profile import main, top_frames


def test_the_hottest_frames_count_each_function_s_own_samples_whatever_its_line():
    collapsed = "\n".join(
        [
            "main (a.py:1);parse (b.py:10) 6",
            "main (a.py:1);parse (b.py:12) 3",
            "main (a.py:1);parse (b.py:10);loads (json.py:5) 5",
            "main (a.py:2) 2",
            'process 7:"python -m x" 4',
        ]
    )

    assert top_frames(collapsed, 2) == [("parse (b.py)", 9 / 16), ("loads (json.py)", 5 / 16)]


@pytest.mark.slow
def test_make_profile_writes_both_flame_graphs_and_prints_ten_frames_each(tmp_path, capsys):
    assert main(["--copies", "1", "--out", str(tmp_path)]) == 0

    out = capsys.readouterr().out
    for name in ("loop", "batch"):
        assert (tmp_path / f"{name}.svg").read_text().lstrip().startswith("<?xml")
        assert (tmp_path / f"{name}.txt").stat().st_size > 0
    frames = [line for line in out.splitlines() if re.fullmatch(r" +\d+\.\d%  \S.*", line)]
    assert len(frames) == 20


def test_the_hottest_frames_within_a_frame_leave_out_the_stacks_outside_it():
    collapsed = "\n".join(
        [
            "main (a.py:1);_find_and_load (<frozen importlib>:3) 50",
            "main (a.py:1);work (w.py:4);parse (b.py:10) 3",
            "main (a.py:1);work (w.py:5) 1",
        ]
    )

    assert top_frames(collapsed, 3, within="work (w.py") == [("parse (b.py)", 3 / 4), ("work (w.py)", 1 / 4)]
