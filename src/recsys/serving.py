"""SageMaker inference handlers (``model_fn``, ``input_fn``, ``predict_fn``, ``output_fn``),
shared by the real MXNet inference container and the kit's local endpoint.

Requests (raw ids, as the workshop sends them):

* ``application/json``: ``{"user_id": [...], "product_id": [...]}`` (the seed's form; a single
  user id, or a one-element list, is broadcast over the products), or a list of
  ``[user_id, product_id]`` pairs. The seed's ``predictor.predict(json.dumps({...}))`` through
  SDK v2's JSON serializer arrives JSON-encoded twice; that is accepted too.
* ``application/octet-stream``: the same JSON bodies (SDK v2's default serializer sends the
  seed's string as raw bytes).
* ``text/csv``: rows ``user_id,product_id`` without a header (Aurora machine learning's
  batches), ``\\n`` or ``\\r\\n``; an empty field is an unknown id.

Responses, in the order of the input, in the ``Accept`` type:

* ``application/json``: a JSON list of scores, ``null`` where the user or the product is unknown;
* ``text/csv``: one line per input row, the score, or an empty field where unknown.

A missing or ``*/*`` Accept is replaced before ``output_fn`` runs, as the SageMaker inference
toolkit does, by ``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT`` (the toolkit's default:
``application/json``; the kit's ``deploy()`` sets ``text/csv`` so that an Aurora call without an
Accept gets CSV). An Accept of ``*/*`` with parameters reaches ``output_fn``, which answers in the
request's own type. Unknown ids are
never scored from a made-up index. Bad requests raise :class:`RequestError` with a 4xx status
and a one-line message before anything reaches the model: empty body (400), unparseable JSON
or CSV (400), non-integer ids (400), mismatched lengths (400), unsupported content type (415)
or Accept (406), body over 6 MB (413). In the container :class:`RequestError` is the inference
toolkit's ``GenericInferenceToolkitError``, so the status reaches the client.

Runs on Python 3.8 (MXNet 1.9 containers).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import sys
import warnings

import numpy as np

try:  # present in the SageMaker inference containers
    from sagemaker_inference.errors import GenericInferenceToolkitError as _ToolkitError
except ImportError:  # pragma: no cover - the kit's own environment
    class _ToolkitError(Exception):
        def __init__(self, status_code, message=None, phrase=None):
            self.status_code = status_code
            self.message = message
            self.phrase = phrase
            super().__init__(status_code, message, phrase)

JSON = "application/json"
CSV = "text/csv"
OCTET = "application/octet-stream"
CONTENT_TYPES = (JSON, CSV, OCTET)
ACCEPTS = (JSON, CSV)
MAX_BODY_BYTES = 6_291_456  # the SageMaker Runtime API's limit
_UNSURE = re.compile(r'[+"]|\d{19}')  # CSV text the fast integer parser must not decide
DEFAULT_ACCEPT_ENV = "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"


class RequestError(_ToolkitError):
    """A bad request: ``status_code`` (4xx) and a one-line ``message``."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(status_code, message, message)

    def __str__(self) -> str:
        return f"{self.status_code}: {self.message}"


class Request:
    """A parsed request: raw ids (int64) and which of them were given (an empty CSV field is not)."""

    def __init__(self, user_ids, product_ids, present, content_type: str) -> None:
        self.user_ids = user_ids
        self.product_ids = product_ids
        self.present = present
        self.content_type = content_type

    def __len__(self) -> int:
        return len(self.user_ids)


class Prediction:
    def __init__(self, scores, content_type: str) -> None:
        self.scores = scores
        self.content_type = content_type


def _media_type(value) -> str:
    return (value or "").split(";")[0].strip().lower()


# ---- model_fn --------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _served_block_class():
    """The Block class, made once on first use (importing this module does not import MXNet)."""
    from .mx import mx

    class ServedModel(mx.gluon.Block):
        """What ``model_fn`` returns: a Gluon ``Block`` (the MXNet serving container accepts nothing else)
        that carries the raw-id scorer as ``.recommender``. It holds no parameters: the scorer keeps
        the precomputed tower vectors only, one copy of the model per serving worker."""

        def __init__(self, recommender) -> None:
            super().__init__()
            self.recommender = recommender

        def forward(self, *args):  # pragma: no cover - the kit's predict_fn scores, not the Block
            raise TypeError("score with .recommender (the kit's predict_fn), not by calling the Block")

    return ServedModel


def model_fn(model_dir):
    """Load the model directory; return a Gluon Block (the container requires a Block) with the
    raw-id scorer attached as ``.recommender``."""
    from .artifacts import Recommender

    return _served_block_class()(Recommender.load(model_dir))


# ---- input_fn --------------------------------------------------------------------------------

def _int_id(value, what: str) -> int:
    if isinstance(value, bool):
        raise RequestError(400, f"{what} must be an integer id, got {json.dumps(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise RequestError(400, f"{what} must be an integer id, got {json.dumps(value)[:40]}")


def _ids(values, what: str) -> list:
    if not isinstance(values, list):
        values = [values]
    return [_int_id(v, what) for v in values]


def _parse_json(text: str, content_type: str) -> Request:
    try:
        obj = json.loads(text)
        if isinstance(obj, str):  # the seed's json.dumps(...) sent through a JSON serializer
            obj = json.loads(obj)
    except (ValueError, TypeError) as e:
        raise RequestError(400, f"body is not valid JSON: {str(e).splitlines()[0]}") from None
    except RecursionError:  # e.g. 100,000 nested "[": the parser's stack, not a server fault
        raise RequestError(400, "body is not valid JSON: nested too deeply") from None
    if isinstance(obj, dict):
        if "user_id" not in obj or "product_id" not in obj:
            raise RequestError(400, 'JSON object needs "user_id" and "product_id"')
        users, products = _ids(obj["user_id"], "user_id"), _ids(obj["product_id"], "product_id")
        if len(users) == 1 and len(products) != 1:
            users = users * len(products)  # one user, several products
        if len(users) != len(products):
            raise RequestError(400, f"{len(users)} user_id values but {len(products)} product_id values")
    elif isinstance(obj, list):
        users, products = [], []
        for n, pair in enumerate(obj):
            if not isinstance(pair, list) or len(pair) != 2:
                raise RequestError(400, f"item {n} is not a [user_id, product_id] pair")
            users.append(_int_id(pair[0], "user_id"))
            products.append(_int_id(pair[1], "product_id"))
    else:
        raise RequestError(400, 'JSON body must be {"user_id": [...], "product_id": [...]} or [[user_id, product_id], ...]')
    if not users:
        raise RequestError(400, "no (user_id, product_id) pairs in the request")
    u, p = _checked_int64(users), _checked_int64(products)
    return Request(u, p, np.ones(len(u), bool), content_type)


def _checked_int64(values: list) -> np.ndarray:
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        raise RequestError(400, "an id does not fit in 64 bits") from None


def _parse_csv(text: str) -> Request:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    body = text.rstrip()  # trailing blank lines (and a final newline) end the batch
    if not body.strip():
        raise RequestError(400, "empty CSV body")
    # fast path: every row is two plain integers, parsed in C without a Python object per field or
    # line. NumPy stops at the first field that is not an integer (a letter, a '.', an empty field),
    # so exactly two values per row means every field parsed; signs other than '-' and 19+ digit
    # runs (possible int64 overflow) go to the careful path below.
    n = body.count("\n") + 1
    joined = body.replace("\n", ",")
    if joined.count(",") == 2 * n - 1 and not _UNSURE.search(joined):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NumPy warns when it stops early; the length check catches that
            arr = np.fromstring(joined, dtype=np.int64, sep=",")
        if len(arr) == 2 * n:
            return Request(arr[0::2].copy(), arr[1::2].copy(), np.ones(n, bool), CSV)
    del joined
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    n = len(lines)
    users = np.zeros(n, np.int64)
    products = np.zeros(n, np.int64)
    present = np.ones(n, bool)
    for i, line in enumerate(lines):
        fields = [f.strip().strip('"').strip() for f in line.split(",")]
        if len(fields) != 2:
            raise RequestError(400, f"CSV row {i + 1} has {len(fields)} fields, expected user_id,product_id")
        for col, (field, what) in enumerate(zip(fields, ("user_id", "product_id"))):
            if field == "" or field.upper() == "NULL":
                present[i] = False
                continue
            if not field.lstrip("-").isdigit():
                raise RequestError(400, f"CSV row {i + 1}: {what} must be an integer id, got {field[:40]!r}")
            try:
                (users if col == 0 else products)[i] = int(field)
            except OverflowError:
                raise RequestError(400, f"CSV row {i + 1}: {what} does not fit in 64 bits") from None
    return Request(users, products, present, CSV)


def too_large(nbytes: int) -> RequestError:
    return RequestError(413, f"body of {nbytes} bytes is over the {MAX_BODY_BYTES} byte limit")


def input_fn(input_data, content_type):
    """Parse a request body (``str`` for JSON and CSV, ``bytes`` otherwise) into a :class:`Request`."""
    ctype = _media_type(content_type) or JSON
    if ctype not in CONTENT_TYPES:
        raise RequestError(415, f"unsupported content type {content_type!r}; use {', '.join(CONTENT_TYPES)}")
    if isinstance(input_data, (bytes, bytearray, memoryview)):
        if len(input_data) > MAX_BODY_BYTES:
            raise too_large(len(input_data))
        try:
            text = bytes(input_data).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(400, "body is not UTF-8 text") from None
    else:
        text = str(input_data)
        if len(text) > MAX_BODY_BYTES:
            raise too_large(len(text.encode("utf-8")))
    if not text.strip():
        raise RequestError(400, "empty request body")
    if ctype == CSV:
        return _parse_csv(text)
    return _parse_json(text, ctype)


# ---- predict_fn / output_fn ------------------------------------------------------------------

def predict_fn(data: Request, model) -> Prediction:
    """Scores of the request's pairs; NaN where an id is unknown or missing."""
    rec = model.recommender if hasattr(model, "recommender") else model
    scores = rec.score(data.user_ids, data.product_ids)
    scores[~data.present] = np.nan
    return Prediction(scores, data.content_type)


def output_fn(prediction: Prediction, accept):
    """Serialise in the Accept type; returns ``(body, content_type)``."""
    media = check_accept(accept)
    if media in ("", "*/*"):
        media = CSV if prediction.content_type == CSV else JSON
    scores = prediction.scores
    if media == CSV:
        body = "\n".join("" if math.isnan(s) else repr(float(s)) for s in scores.tolist()) + "\n"
        return body, CSV
    return json.dumps([None if math.isnan(s) else s for s in scores.tolist()]), JSON


def check_accept(accept) -> str:
    """The Accept's media type, or a 406 (the local endpoint calls this before the model runs)."""
    media = _media_type(accept)
    if media not in ("", "*/*") + ACCEPTS:
        raise RequestError(406, f"unsupported Accept {accept!r}; use {' or '.join(ACCEPTS)}")
    return media


def effective_accept(accept, default_accept=None) -> str:
    """The inference toolkit's rule: a missing or exactly ``*/*`` Accept becomes the default
    (``default_accept``, else ``$SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT``, else ``application/json``)."""
    if not accept or accept == "*/*":
        return default_accept or os.environ.get(DEFAULT_ACCEPT_ENV) or JSON
    return accept


def handle(model, body: bytes, content_type, accept, handlers=None, default_accept=None):
    """The whole request path of the container, for the local endpoint: returns ``(body, type)``.

    As the MXNet container does, a missing or ``*/*`` Accept becomes the default Accept
    (:func:`effective_accept`), and the body reaches ``input_fn`` as ``str`` for exactly
    ``application/json`` or ``text/csv`` and as ``bytes`` otherwise. ``handlers`` is the entry
    point module (default: this one)."""
    h = handlers or sys.modules[__name__]
    accept = effective_accept(accept, default_accept)
    check_accept(accept)
    if len(body) > MAX_BODY_BYTES:
        raise too_large(len(body))
    data = body
    if (content_type or "").strip().lower() in (JSON, CSV):  # exactly these types, no parameters
        try:
            data = body.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(400, "body is not UTF-8 text") from None
    result = h.output_fn(h.predict_fn(h.input_fn(data, content_type), model), accept)
    return result if isinstance(result, tuple) else (result, accept)
