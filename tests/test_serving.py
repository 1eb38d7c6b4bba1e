"""The inference handlers, called as the MXNet container calls them."""

import json
import math
import types

import numpy as np
import pytest

from recsys import serving
from recsys.serving import RequestError, input_fn, output_fn, predict_fn


class FakeRecommender:
    """Known users 1, 2 and products 10, 20: score = user * 100 + product."""

    def score(self, users, products):
        users, products = np.asarray(users), np.asarray(products)
        ok = np.isin(users, [1, 2]) & np.isin(products, [10, 20])
        return np.where(ok, users * 100.0 + products, np.nan)


MODEL = types.SimpleNamespace(recommender=FakeRecommender())


def run(body, content_type="application/json", accept="application/json"):
    out, ctype = output_fn(predict_fn(input_fn(body, content_type), MODEL), accept)
    return out, ctype


def test_seed_json_form_with_broadcast_user():
    out, ctype = run(json.dumps({"user_id": [1], "product_id": [10, 20, 99]}))
    assert ctype == "application/json" and json.loads(out) == [110.0, 120.0, None]
    out, _ = run(json.dumps({"user_id": 2, "product_id": 10}))
    assert json.loads(out) == [210.0]


def test_pairs_form_and_string_ids():
    out, _ = run(json.dumps([[1, 10], ["2", "20"], [3, 10]]))
    assert json.loads(out) == [110.0, 220.0, None]


def test_seed_double_encoded_json_and_octet_stream():
    seed_body = json.dumps(json.dumps({"user_id": [1], "product_id": [10, 20]}))  # SDK v2 JSONSerializer of a str
    assert json.loads(run(seed_body)[0]) == [110.0, 120.0]
    raw = json.dumps({"user_id": [1], "product_id": [20]}).encode()  # SDK v2 default: bytes, octet-stream
    assert json.loads(run(raw, "application/octet-stream")[0]) == [120.0]


def test_csv_in_csv_out_in_order_with_unknown_and_empty_fields():
    out, ctype = run("1,10\r\n2,20\n5,10\n,20\n\"1\",\"20\"\n", "text/csv", "text/csv")
    assert ctype == "text/csv"
    assert out.split("\n") == ["110.0", "220.0", "", "", "120.0", ""]


def test_csv_null_fields_are_unknown_ids_never_scored():
    """SQL's NULL as Aurora writes it into a CSV batch (any case, quoted or not): that id is unknown, so the row's
    answer is an empty CSV field / JSON null, and no made-up id (0) stands in for it."""
    body = "1,10\nNULL,20\n2,null\n\"NULL\",\"Null\"\n2,20\n"
    req = input_fn(body, "text/csv")
    assert req.present.tolist() == [True, False, False, False, True]
    assert req.user_ids[[0, 2, 4]].tolist() == [1, 2, 2] and req.product_ids[[0, 1, 4]].tolist() == [10, 20, 20]

    class ZeroIsKnown(FakeRecommender):  # a model that would score id 0 if it were sent
        def score(self, users, products):
            return np.asarray(users) * 100.0 + np.asarray(products)

    model = types.SimpleNamespace(recommender=ZeroIsKnown())
    out, ctype = output_fn(predict_fn(req, model), "text/csv")
    assert ctype == "text/csv" and out.split("\n") == ["110.0", "", "", "", "220.0", ""]
    out, _ = output_fn(predict_fn(input_fn(body, "text/csv"), model), "application/json")
    assert json.loads(out) == [110.0, None, None, None, 220.0]


def test_one_row_csv_and_default_accept_mirrors_the_request():
    out, ctype = run("2,10", "text/csv", None)
    assert ctype == "text/csv" and out == "210.0\n"
    out, ctype = run(json.dumps([[2, 10]]), "application/json", "*/*")
    assert ctype == "application/json" and json.loads(out) == [210.0]
    out, ctype = run("2,10\n", "text/csv", "application/json")
    assert json.loads(out) == [210.0]


def test_content_type_parameters_are_ignored():
    assert json.loads(run("[[1, 10]]", "application/json; charset=utf-8")[0]) == [110.0]


def test_nineteen_digit_and_negative_ids_are_unknown_not_errors():
    out, _ = run("9223372036854775807,10\n-1,10\n", "text/csv", "text/csv")
    assert out == "\n\n"


@pytest.mark.parametrize("body, ctype, status, fragment", [
    ("", "application/json", 400, "empty"),
    ("   \n", "text/csv", 400, "empty"),
    ("{not json", "application/json", 400, "not valid JSON"),
    ('{"user_id": [1]}', "application/json", 400, "product_id"),
    ('{"user_id": [1, 2], "product_id": [10, 20, 30]}', "application/json", 400, "2 user_id values but 3"),
    ('{"user_id": [1.5], "product_id": [10]}', "application/json", 400, "integer"),
    ('{"user_id": ["abc"], "product_id": [10]}', "application/json", 400, "integer"),
    ('{"user_id": [true], "product_id": [10]}', "application/json", 400, "integer"),
    ("[[1, 2, 3]]", "application/json", 400, "pair"),
    ("[]", "application/json", 400, "no (user_id"),
    ('"just a string"', "application/json", 400, "not valid JSON"),
    ("1,2,3\n", "text/csv", 400, "3 fields"),
    ("1;2\n", "text/csv", 400, "1 fields"),
    ("abc,10\n", "text/csv", 400, "integer"),
    ("99999999999999999999,1\n", "text/csv", 400, "64 bits"),
    ("1,10", "text/plain", 415, "unsupported content type"),
    ("1,10", "application/x-npy", 415, "unsupported content type"),
])
def test_bad_requests_get_a_4xx_with_one_line(body, ctype, status, fragment):
    with pytest.raises(RequestError) as e:
        input_fn(body, ctype)
    assert e.value.status_code == status and fragment in e.value.message
    assert "\n" not in e.value.message


def test_oversized_body_is_413_before_parsing():
    big = b"1,10\n" * (serving.MAX_BODY_BYTES // 5 + 1)
    with pytest.raises(RequestError) as e:
        input_fn(big, "application/octet-stream")
    assert e.value.status_code == 413


def test_unsupported_accept_is_406():
    with pytest.raises(RequestError) as e:
        serving.check_accept("application/xml")
    assert e.value.status_code == 406
    with pytest.raises(RequestError):
        output_fn(serving.Prediction(np.array([1.0]), "application/json"), "image/png")


def test_handle_never_reaches_the_model_on_bad_requests():
    class Exploding:
        def score(self, *a):
            raise AssertionError("the model was called")

    model = types.SimpleNamespace(recommender=Exploding())
    for body, ctype, accept in ((b"", "text/csv", "text/csv"), (b"x,y", "text/csv", "text/csv"),
                                (b"1,2", "text/csv", "application/xml"), (b"1,2", "text/html", "text/csv")):
        with pytest.raises(RequestError):
            serving.handle(model, body, ctype, accept)


def test_csv_scores_round_trip_exactly():
    scores = np.array([0.1 + 0.2, 1e-300, -3.25, math.pi])
    out, _ = output_fn(serving.Prediction(scores, "text/csv"), "text/csv")
    assert [float(x) for x in out.split()] == scores.tolist()
