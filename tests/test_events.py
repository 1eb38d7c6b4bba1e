import numpy as np
import pandas as pd
import pytest

from conftest import NOV, OCT, row
from recsys import events as ev
from recsys.events import EventsFormatError, read_events
from reference import read_rows


def test_october_sample_counts_match_plain_python():
    expected_valid, expected_bad, expected_read = read_rows(OCT)
    df, rep = read_events(OCT, progress=False)
    assert rep.rows_read == expected_read == 17435
    assert rep.rows_malformed == len(expected_bad) == 1
    assert rep.files[0].malformed_examples == [(expected_bad[0], "expected 9 fields, got 8")]
    assert len(df) == len(expected_valid) == 17434
    assert df["user_id"].nunique() == len({r["user_id"] for r in expected_valid}) == 4504
    assert df["product_id"].nunique() == 6493
    assert rep.event_type_counts == {"view": 17055, "cart": 165, "purchase": 214}
    # ids and prices exactly as in the text
    assert df["category_id"].tolist()[:50] == [int(r["category_id"]) for r in expected_valid[:50]]
    assert df["user_id"].tolist() == [int(r["user_id"]) for r in expected_valid]


def test_dtypes_are_compact():
    df, _ = read_events(OCT, progress=False)
    assert str(df["event_time"].dtype) == "datetime64[s]"
    for c in ("product_id", "category_id", "user_id"):
        assert df[c].dtype == np.int64
    for c in ("event_type", "category_code", "brand"):
        assert isinstance(df[c].dtype, pd.CategoricalDtype)
    assert df["price"].dtype == np.float32
    assert df["event_type_digit"].dtype == np.int8
    assert df.memory_usage(deep=True).sum() / len(df) < 64  # bytes per row


def test_november_sample_quoted_empty_fields_are_missing():
    df, rep = read_events(NOV, progress=False)
    assert rep.rows_malformed == 0 and len(df) == 10034
    assert df["category_code"].isna().sum() > 0
    assert not (df["category_code"].astype(object) == "").any()


def test_malformed_rows_are_counted_with_line_numbers(write_csv):
    lines = [
        row(user=1),                                   # line 2 ok
        row(user=2).rsplit(",", 1)[0],                 # 3: 8 fields
        row(user=3) + ",extra",                        # 4: 10 fields
        row(user="abc"),                               # 5: non-numeric user
        row(product=""),                               # 6: missing product
        row(t="not a time"),                           # 7: bad time
        row(category="20530135556318826551"),          # 8: 20 digits: beyond int64
        row(category="9999999999999999999"),           # 9: 19 digits beyond int64
        row(user=4, product=2002),                     # 10 ok
        row(user="-5"),                                # 11 negative
        row(user=6, price="n/a"),                      # 12 ok, price NaN
    ]
    df, rep = read_events(write_csv("bad.csv", lines), progress=False)
    f = rep.files[0]
    assert f.rows_read == 11 and f.rows_valid == 3 and f.rows_malformed == 8
    assert [n for n, _ in f.malformed_examples] == [3, 4, 5, 6, 7, 8, 9, 11]
    reasons = dict(f.malformed_examples)
    assert reasons[3] == "expected 9 fields, got 8" and reasons[4] == "expected 9 fields, got 10"
    assert "user_id" in reasons[5] and "product_id" in reasons[6] and "event_time" in reasons[7]
    assert "category_id" in reasons[8] and "category_id" in reasons[9]
    assert df["user_id"].tolist() == [1, 4, 6]
    assert np.isnan(df["price"].iloc[2])


def test_line_numbers_stay_right_across_blocks_and_blank_lines(write_csv, monkeypatch):
    monkeypatch.setattr(ev, "BLOCK_SIZE", 4096)  # many blocks
    lines = [row(user=i, session=f"s{i}") for i in range(1, 400)]
    bad_at = {57: "x", 150: "", 151: "bad", 333: "short"}  # list index -> kind
    for i, kind in bad_at.items():
        if kind == "x":
            lines[i] = row(user="x")
        elif kind == "":
            lines[i] = ""
        elif kind == "bad":
            lines[i] = row(t="2019-13-45 99:99:99 UTC")
        else:
            lines[i] = "1,2,3"
    df, rep = read_events(write_csv("blocks.csv", lines), progress=False)
    f = rep.files[0]
    assert f.blank_lines == 1
    assert f.rows_read == 398 and f.rows_malformed == 3 and len(df) == 395
    assert [n for n, _ in f.malformed_examples] == [57 + 2, 151 + 2, 333 + 2]


def test_examples_are_capped_but_count_is_complete(write_csv):
    lines = [row(user="bad")] * 25 + [row()]
    _, rep = read_events(write_csv("many.csv", lines), progress=False)
    assert rep.rows_malformed == 25 and len(rep.files[0].malformed_examples) == ev.MAX_EXAMPLES


def test_empty_file_is_an_error(write_csv):
    with pytest.raises(EventsFormatError, match=r"empty\.csv: empty file"):
        read_events(write_csv("empty.csv", [], header=False), progress=False)


def test_header_only_gives_zero_rows(write_csv):
    df, rep = read_events(write_csv("header.csv", []), progress=False)
    assert len(df) == 0 and rep.rows_read == 0 and rep.rows_malformed == 0
    assert list(df.columns)[:8] == list(ev.READ_COLUMNS)
    assert df["user_id"].dtype == np.int64


def test_missing_column_names_column_and_file(write_csv, tmp_path):
    path = tmp_path / "nouser.csv"
    path.write_text("event_time,event_type,product_id,category_id,category_code,brand,price,user_session\n")
    with pytest.raises(EventsFormatError, match=r"nouser\.csv: missing required column\(s\) 'user_id'"):
        read_events(path, progress=False)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_events(tmp_path / "nope.csv", progress=False)


def test_nineteen_digit_ids_are_exact(write_csv):
    big = 2053013555631882655
    top = 9223372036854775807
    df, rep = read_events(write_csv("ids.csv", [row(category=big), row(category=top, user=top)]), progress=False)
    assert rep.rows_malformed == 0
    assert df["category_id"].tolist() == [big, top]
    assert df["user_id"].tolist() == [501, top]


def test_missing_brand_and_category_code_keep_the_row(write_csv):
    df, rep = read_events(write_csv("meta.csv", [row(code="", brand=""), row(code='""', brand='""')]), progress=False)
    assert rep.rows_malformed == 0 and len(df) == 2
    assert df["brand"].isna().all() and df["category_code"].isna().all()


def test_duplicate_events_are_kept(write_csv):
    df, rep = read_events(write_csv("dup.csv", [row(), row(), row()]), progress=False)
    assert len(df) == 3 and rep.rows_malformed == 0


def test_event_encoding_and_unknown_types_are_counted(write_csv):
    kinds = ["purchase", "cart", "remove_from_cart", "view", "wishlist", "wishlist", ""]
    df, rep = read_events(write_csv("types.csv", [row(etype=k) for k in kinds]), progress=False)
    assert df["event_type_digit"].tolist() == [4, 3, 2, 1, 1, 1, 1]
    assert rep.other_event_types == {"wishlist": 2, "": 1}


def test_several_files_concatenate_in_order_and_gzip_reads_the_same(write_csv):
    a = write_csv("a.csv", [row(user=1), row(user=2)])
    b = write_csv("b.csv.gz", [row(user=3), "broken"])
    b_plain = write_csv("b.csv", [row(user=3), "broken"])
    df, rep = read_events([a, b], progress=False)
    assert df["user_id"].tolist() == [1, 2, 3]
    assert [f.rows_malformed for f in rep.files] == [0, 1]
    assert rep.files[1].malformed_examples == [(3, "expected 9 fields, got 1")]
    df2, _ = read_events([a, b_plain], progress=False)
    pd.testing.assert_frame_equal(df, df2)


def test_time_without_utc_suffix_is_accepted(write_csv):
    df, rep = read_events(write_csv("t.csv", [row(t="2019-10-01 00:00:05")]), progress=False)
    assert rep.rows_malformed == 0
    assert df["event_time"].iloc[0] == pd.Timestamp("2019-10-01 00:00:05")


def test_summary_lines_mention_malformed_rows():
    _, rep = read_events(OCT, progress=False)
    (line,) = rep.summary_lines()
    assert "1 malformed row(s)" in line and "line 17436" in line
