"""The local endpoint under hostile input: Content-Length checked before the body is read, bounded
bytes in flight (503 + Retry-After past the budget), 400 for pathological JSON, 405 for wrong methods,
HEAD /ping, and /ping answering throughout."""

import http.client
import json
import threading

import pytest
import requests

from conftest import OCT
from recsys.sagemaker.local import LocalEndpoint


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    from recsys.prepare import prepare_files
    from recsys.training import train_and_save

    d = tmp_path_factory.mktemp("bounds")
    prepared = prepare_files([OCT], progress=False)
    train_and_save(prepared, d / "model", progress=False, epochs=1, num_embeddings=8)
    with LocalEndpoint(d / "model", name="bounds") as ep:
        yield ep


def _raw(ep, method, path, headers, body=b""):
    conn = http.client.HTTPConnection("127.0.0.1", ep.port, timeout=10)
    conn.putrequest(method, path)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    if body:
        conn.send(body)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r, data


def test_oversized_content_length_is_refused_before_the_body_is_sent(endpoint):
    r, data = _raw(endpoint, "POST", "/invocations", {"Content-Type": "text/csv", "Content-Length": str(10 ** 9)})
    assert r.status == 413 and b"over the 6291456 byte limit" in data  # answered without a byte of body sent


@pytest.mark.parametrize("value", ["-5", "abc"])
def test_invalid_content_length_is_400(endpoint, value):
    r, data = _raw(endpoint, "POST", "/invocations", {"Content-Type": "text/csv", "Content-Length": value})
    assert r.status == 400 and b"invalid Content-Length" in data


def test_methods(endpoint):
    assert requests.head(endpoint.url + "/ping", timeout=5).status_code == 200
    r = requests.get(endpoint.url + "/invocations", timeout=5)
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    r = requests.post(endpoint.url + "/ping", timeout=5)
    assert r.status_code == 405 and r.headers["Allow"] == "GET, HEAD"
    assert requests.put(endpoint.url + "/invocations", data=b"1,2", timeout=5).status_code == 405
    assert requests.get(endpoint.url + "/nothing", timeout=5).status_code == 404


def test_deeply_nested_json_is_400_not_500(endpoint):
    r = requests.post(endpoint.url + "/invocations", data="[" * 100_000, headers={"Content-Type": "application/json"},
                      timeout=10)
    assert r.status_code == 400 and "nested too deeply" in r.text


def test_parallel_large_requests_stay_within_the_in_flight_budget(endpoint):
    body = ("512389738,1002099\n" * (5_900_000 // 18)).encode()
    statuses, lock = [], threading.Lock()
    pings = []

    def send():
        r = requests.post(endpoint.url + "/invocations", data=body, headers={"Content-Type": "text/csv",
                                                                            "Accept": "text/csv"}, timeout=120)
        with lock:
            statuses.append((r.status_code, r.headers.get("Retry-After")))

    threads = [threading.Thread(target=send) for _ in range(40)]
    for t in threads:
        t.start()
    for _ in range(5):
        pings.append(requests.get(endpoint.url + "/ping", timeout=10).status_code)
    for t in threads:
        t.join()
    codes = [s for s, _ in statuses]
    assert set(codes) <= {200, 503} and codes.count(200) >= 1
    assert all(retry == "1" for s, retry in statuses if s == 503)
    assert endpoint.peak_inflight_bytes <= endpoint.MAX_INFLIGHT_BYTES
    assert pings == [200] * 5
    assert json.loads(requests.get(endpoint.url + "/ping", timeout=5).text) == {"status": "Healthy"}


def test_a_failing_model_is_a_500_with_one_line_not_a_traceback(endpoint, monkeypatch):
    import types

    def predict_fn(data, model):
        raise RuntimeError("the model fell over\nsecond line")

    handlers = types.SimpleNamespace(input_fn=endpoint.handlers.input_fn, predict_fn=predict_fn,
                                     output_fn=endpoint.handlers.output_fn)
    monkeypatch.setattr(endpoint, "handlers", handlers)
    r = requests.post(endpoint.url + "/invocations", data="1,2", headers={"Content-Type": "text/csv"}, timeout=5)
    assert r.status_code == 500 and r.text == "internal error: RuntimeError: the model fell over\n"
    client = endpoint.runtime_client()
    with pytest.raises(client.exceptions.ModelError) as e:
        client.invoke_endpoint(EndpointName=endpoint.name, ContentType="text/csv", Body=b"1,2")
    assert e.value.response["OriginalStatusCode"] == 500 and "Received server error (500)" in str(e.value)
