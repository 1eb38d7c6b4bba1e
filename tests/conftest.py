import gzip
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
OCT = SAMPLE / "rees46_2019-Oct_head_0000-0250UTC.csv.gz"
NOV = SAMPLE / "rees46_2019-Nov_random10k.csv.gz"
HEADER = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"

os.environ.setdefault("RECSYS_PROGRESS", "0")
os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")


def row(t="2019-10-01 00:00:00 UTC", etype="view", product=1001, category=2053013555631882655,
        code="electronics.smartphone", brand="apple", price="10.50", user=501, session="s-1"):
    return f"{t},{etype},{product},{category},{code},{brand},{price},{user},{session}"


@pytest.fixture
def write_csv(tmp_path):
    """write_csv(name, lines, header=True) -> path; .gz names are gzipped."""

    def _write(name, lines, header=True):
        text = "\n".join(([HEADER] if header else []) + list(lines))
        if lines or header:
            text += "\n"
        path = tmp_path / name
        data = text.encode()
        if name.endswith(".gz"):
            data = gzip.compress(data, mtime=0)
        path.write_bytes(data)
        return path

    return _write
