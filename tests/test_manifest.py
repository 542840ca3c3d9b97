import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.manifest import read_manifest


def write_csv(tmp_path, text):
    p = tmp_path / "m.csv"
    p.write_text(text)
    return p


def test_every_bad_row_is_reported_with_row_number_and_valid_rows_remain(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    p = write_csv(tmp_path, "source,start,end,strat\n"
                  "dQw4w9WgXcQ,1,6,\n"          # 1 ok
                  "ab;rm -rf /,1,2,\n"          # 2 shell metacharacters
                  "dQw4w9WgXcQ,1,6,\n"          # 3 duplicate of 1
                  "a.mp4,5,2,\n"                # 4 end <= start
                  "a.mp4,-1,2,\n"               # 5 negative
                  "https://example.org/v.mp4,,,\n"  # 6 ok
                  "a.mp4,abc,,\n"               # 7 not a number
                  ",1,2,\n")                    # 8 empty source
    m = read_manifest(p)
    assert [r.row for r in m.rows] == [1, 6]
    by_row = {pr.row: pr.reason for pr in m.problems}
    assert "did you mean 'start'" in by_row[0]
    assert "not allowed" in by_row[2]
    assert "duplicate of row 1" in by_row[3]
    assert "end (2.0) <= start (5.0)" in by_row[4]
    assert "negative" in by_row[5]
    assert "not a number" in by_row[7]
    assert "empty source" in by_row[8]


def test_kinds_and_ids(tmp_path):
    (tmp_path / "clip one.mp4").write_bytes(b"x")
    p = write_csv(tmp_path, "source,start,id\ndQw4w9WgXcQ,,\nhttp://127.0.0.1:8/v.mp4,,\nclip one.mp4,,\nclip one.mp4,3,my_id\n")
    m = read_manifest(p)
    assert [r.kind for r in m.rows] == ["youtube", "url", "path", "path"]
    assert m.rows[0].source_id == "dQw4w9WgXcQ"
    assert all("." not in r.source_id and " " not in r.source_id for r in m.rows)
    assert m.rows[3].source_id == "my_id"
    assert m.rows[2].source == str(tmp_path / "clip one.mp4")  # relative to the manifest


def test_source_id_does_not_depend_on_where_the_folder_lives(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "v.mp4").write_bytes(b"x")
        write_csv(tmp_path / sub, "source\nv.mp4\n")
    ids = [read_manifest(tmp_path / s / "m.csv").rows[0].source_id for s in ("a", "b")]
    assert ids[0] == ids[1]


def test_bad_user_id_and_reused_id(tmp_path):
    p = write_csv(tmp_path, "source,id\ndQw4w9WgXcQ,a.b\ndQw4w9WgXcR,x\ndQw4w9WgXcS,x\n")
    m = read_manifest(p)
    reasons = {pr.row: pr.reason for pr in m.problems}
    assert "must be 1-64 characters" in reasons[1]
    assert "already used by row 2" in reasons[3]
    assert [r.row for r in m.rows] == [2]


def test_jsonl_and_parquet(tmp_path):
    j = tmp_path / "m.jsonl"
    j.write_text(json.dumps({"source": "dQw4w9WgXcQ", "start": 0, "end": 5}) + "\n[1,2]\nnot json\n")
    m = read_manifest(j)
    assert len(m.rows) == 1 and m.rows[0].end_s == 5.0
    assert {p.row for p in m.problems} == {2, 3}
    q = tmp_path / "m.parquet"
    pq.write_table(pa.table({"source": ["dQw4w9WgXcQ", "bad id!"], "start": [1.0, None], "end": [6.0, None]}), q)
    m = read_manifest(q)
    assert [r.row for r in m.rows] == [1] and m.problems[0].row == 2


def test_unknown_format(tmp_path):
    p = tmp_path / "m.txt"
    p.write_text("x")
    with pytest.raises(ValueError, match="unsupported format"):
        read_manifest(p)


def test_a_byte_order_mark_is_read(tmp_path):
    p = tmp_path / "m.csv"
    p.write_bytes("source,start,end\ndQw4w9WgXcQ,1,6\n".encode("utf-8-sig"))
    m = read_manifest(p)
    assert m.problems == [] and [r.source for r in m.rows] == ["dQw4w9WgXcQ"]
    j = tmp_path / "m.jsonl"
    j.write_bytes((json.dumps({"source": "dQw4w9WgXcQ"}) + "\n").encode("utf-8-sig"))
    assert len(read_manifest(j).rows) == 1


def test_a_folder_is_not_a_video(tmp_path):
    (tmp_path / "videos").mkdir()
    m = read_manifest(write_csv(tmp_path, "source\nvideos\n"))
    assert m.rows == [] and "is a folder, not a video file" in m.problems[0].reason


def test_overlapping_spans_of_one_source_are_rejected_naming_the_other_row(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    m = read_manifest(write_csv(tmp_path, "source,start,end,id\n"
                                "a.mp4,0,10,\n"      # 1 ok
                                "a.mp4,0,5,\n"       # 2 inside row 1
                                "a.mp4,10,15,\n"     # 3 touches row 1: no shared window, ok
                                "a.mp4,12,,\n"       # 4 open end overlaps row 3
                                "a.mp4,0,5,part\n"))  # 5 its own id: its keys differ, ok
    assert [r.row for r in m.rows] == [1, 3, 5]
    reasons = {p.row: p.reason for p in m.problems}
    assert "overlaps row 1's span 0-10 s" in reasons[2]
    assert "overlaps row 3's span 10-15 s" in reasons[4]
    keys = {(r.source_id, r.span_tag) for r in m.rows}
    assert len(keys) == 3


def test_an_id_cannot_stand_for_two_sources(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    m = read_manifest(write_csv(tmp_path, "source,id\ndQw4w9WgXcQ,\na.mp4,dQw4w9WgXcQ\n"))
    assert [r.row for r in m.rows] == [1]
    assert "already stands for another source" in m.problems[0].reason
