"""The privacy benchmark on a small lake: its layout, the subject's rows where it says, and the erasure it checks."""

from __future__ import annotations

import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.config import Config
from privacy.lake import LakeMatcher, scan
from tools.bench_privacy import DATASET, SUBJECT_FILES, SUBJECT_ROWS, build_lake, main, measure, read_lake, subject_of

PERSONS = 40


def test_the_lake_holds_the_subject_in_a_handful_of_files_and_every_row_once(tmp_path):
    subject_rows = build_lake(str(tmp_path), 3_000, 12, PERSONS)

    hits = scan(str(tmp_path), LakeMatcher(subject_of(PERSONS), Config().stitch_settings()))

    assert subject_rows == SUBJECT_ROWS == sum(hit.matched for hit in hits)
    assert len(hits) == SUBJECT_FILES
    assert read_lake(str(tmp_path)) == 3_000
    (path, *_) = sorted(tmp_path.glob(f"{DATASET}/date=*/hour=*/part-*-0-0-of-1.parquet"))
    messages = pq.read_table(path).column("_message_id")
    assert pc.count_distinct(messages).as_py() == len(messages)


def test_the_erasure_measured_removes_exactly_the_subjects_rows(tmp_path):
    build_lake(str(tmp_path), 3_000, 12, PERSONS)
    matcher = LakeMatcher(subject_of(PERSONS), Config().stitch_settings())

    read_s, scan_s, erase_s, erasure = measure(str(tmp_path), matcher)

    assert min(read_s, scan_s, erase_s) > 0
    assert erasure.rows_removed == {DATASET: SUBJECT_ROWS}
    assert read_lake(str(tmp_path)) == 3_000 - SUBJECT_ROWS


def test_main_prints_the_figure(capsys):
    main(["--rows", "2000", "--files", "8", "--persons", "30"])

    assert "ratio erase/read" in capsys.readouterr().out
