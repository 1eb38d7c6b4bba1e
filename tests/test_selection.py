"""The validation protocol, the side-information model, presets, and serving the best model."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import requests

from conftest import OCT
from recsys import selection
from recsys.artifacts import Recommender, save_model
from recsys.prepare import prepare_files


@pytest.fixture(scope="module")
def prepared():
    return prepare_files([OCT], progress=False)


def test_validation_split_uses_training_rows_only_and_does_not_leak(prepared):
    split = selection.validation_split(prepared)
    train = prepared.train
    warm = np.unique(train["user"])
    assert sorted(split.test["user"]) == sorted(warm)  # one validation row per warm user
    last = train.groupby("user").tail(1).set_index("user")["item"]  # train is in time order
    assert (split.test.set_index("user")["item"] == last.loc[split.test["user"]].to_numpy()).all()
    pairs = set(zip(split.train["user"], split.train["item"]))
    assert not pairs & set(zip(split.test["user"], split.test["item"]))  # no validation pair in its training rows
    assert pairs <= set(zip(train["user"], train["item"]))  # and nothing from the test split
    assert not pairs & set(zip(prepared.test["user"], prepared.test["item"]))


def test_choose_epochs_picks_the_best_checkpoint():
    scores = {10: 0.2, 20: 0.4, 30: 0.4, 40: 0.3}

    def fake_fit(on_epoch):
        for e in range(1, 41):
            on_epoch(e, e)

    orig = selection.validation_scores
    selection.validation_scores = lambda p, s, net, **k: {"warm": {"hr_at_10": scores[net],
                                                                  "hr_at_10_se": net / 1000}}
    try:
        got = selection.choose_epochs(None, None, fake_fit, 10)
    finally:
        selection.validation_scores = orig
    assert got["epochs"] == 20 and got["hr_at_10"] == 0.4  # the first of the tied best: fewer epochs
    assert got["hr_at_10_se"] == 0.02  # the chosen epoch's standard error


def test_side_model_saves_loads_and_scores_like_the_network(prepared, tmp_path):
    from recsys.metrics import evaluate_model
    from recsys.mx import mx

    net = selection.train_preset(prepared, "side", epochs=5)
    save_model(tmp_path / "m", net, prepared, {"preset": "side"}, {})
    rec = Recommender.load(tmp_path / "m")
    t = prepared.test.head(50)
    direct = net(mx.nd.array(t["user"].to_numpy()), mx.nd.array(t["item"].to_numpy())).asnumpy()
    np.testing.assert_allclose(rec.score(t["user_id"], t["product_id"]), direct, rtol=1e-4, atol=1e-5)
    # cold users (no training row) are ranked by the learned item bias alone: their vector is (0, ..., 0, 1),
    # so every product's score is its bias (not an untrained random embedding's dot product)
    cold = np.setdiff1d(prepared.test["user"], prepared.train["user"])
    assert len(cold) > 0
    np.testing.assert_array_equal(rec.user_vectors[cold], np.tile(np.r_[np.zeros(rec.user_vectors.shape[1] - 1), 1.0],
                                                                  (len(cold), 1)))
    scores = rec.score(np.repeat(prepared.users["user_id"].to_numpy()[cold[:3]], 5), np.tile(rec.product_ids[:5], 3))
    np.testing.assert_allclose(scores, np.tile(rec.item_vectors[:5, -1], 3), rtol=1e-6)
    assert np.ptp(rec.item_vectors[:, -1]) > 0  # a learned bias that orders the products
    assert evaluate_model(net, prepared)["hr_at_10"] > 0.087  # better than popularity after 5 epochs


@pytest.mark.notebook
def test_train_preset_best_from_the_command_line_and_serve_it(prepared, tmp_path):
    prep = tmp_path / "p"
    prepared.save(prep)
    r = subprocess.run([sys.executable, "-m", "recsys.cli", "train", str(prep), "--model-dir", str(tmp_path / "best"),
                        "--preset", "best", "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["preset"] == "best" and m["epochs"] == 6 and m["evaluated_users"] == 882 and not m["evaluation_sampled"]
    assert m["hr_at_10"] >= 0.36  # the target (above the heuristic's 0.338), on all 882 October test users
    rec = Recommender.load(tmp_path / "best")
    proc = subprocess.Popen([sys.executable, "-m", "recsys.cli", "serve", str(tmp_path / "best"), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        url = json.loads(proc.stdout.readline())["url"]
        u, p = int(rec.user_ids[0]), [int(x) for x in rec.product_ids[:3]]
        body = "".join(f"{u},{x}\n" for x in p)
        got = requests.post(url + "/invocations", data=body, headers={"Content-Type": "text/csv"}, timeout=10)
        assert got.status_code == 200
        np.testing.assert_allclose([float(x) for x in got.text.split()], rec.score([u] * 3, p), rtol=1e-6)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_epochs_are_searched_only_where_the_full_fit_can_tell_the_candidates_apart():
    """``search_at_size``: once every candidate of the epoch search (``every`` ... ``max_epochs`` on the
    validation sample) trains one epoch on all rows, the search is the preset's epochs, scored once; below
    that size it is searched as SEARCH says. ``example_unit``/``examples`` count what an epoch trains on."""
    from recsys.presets import PRESETS, REFERENCE_EXAMPLES

    side = selection.SEARCH["side"]
    edge = side["max_epochs"] * REFERENCE_EXAMPLES  # max_epochs x REFERENCE_EXAMPLES examples: one epoch each
    assert selection.search_at_size("side", side, edge + 1) == {**side, "every": PRESETS["side"]["epochs"],
                                                                  "max_epochs": PRESETS["side"]["epochs"]}
    assert selection.search_at_size("side", side, edge) == {**side, "every": 40, "max_epochs": 40}
    assert selection.search_at_size("side", side, edge - 1) == side  # two epochs for the largest candidate
    assert selection.search_at_size("implicit", selection.SEARCH["implicit"], 10_000) == selection.SEARCH["implicit"]
    assert [selection.example_unit(n) for n in ("seed", "implicit", "side", "sequence")] == ["rows", "pairs", "pairs",
                                                                                            "pairs"]


def test_the_search_shows_progress_and_skips_epochs_at_size(prepared, monkeypatch, capsys):
    """The ranking table's search has a progress bar per model (``choose NAME``, in epochs, with an ETA); above
    the size where the epochs cannot matter, each grid setting is trained once and its curve has one point.
    The size is faked (``examples``) so that the October sample stands for a large dataset."""
    monkeypatch.setenv("RECSYS_PROGRESS", "lines")
    monkeypatch.setattr(selection, "examples", lambda prepared, unit: 10 ** 9)
    table, nets, choices = selection.ranking_table(prepared, models=("side",), max_users=200, progress=True)
    err = capsys.readouterr().err
    assert "choose side" in err and "epoch" in err
    _check_standard_errors(table, test_users=200)
    assert choices["side"]["validation_curve"].keys() == {"40"}
    assert [g["epochs"] for g in choices["side"]["grid"]] == [40, 40]


def test_a_validation_sample_above_the_epochs_rules_reference_is_refused(prepared):
    """Choices made on more than REFERENCE_EXAMPLES examples would be scaled on the sample itself (its epochs
    cut short, the checkpoints of the search never reached): a clear error before anything is trained."""
    from recsys.presets import REFERENCE_EXAMPLES

    with pytest.raises(ValueError, match="validation_rows must be between 1 and 20,000"):
        selection.ranking_table(prepared, models=("side",), validation_rows=REFERENCE_EXAMPLES + 1)


def test_no_trained_network_outlives_its_turn_in_the_table(prepared):
    """With ``on_model`` each network is handed over and dropped; its reference cycles (network, Trainer, row
    tables) are collected before the table moves on, not whenever the cyclic collector next runs (disabled
    here: between a few large allocations it effectively is). At full size each such model held 0.5-2 GB."""
    import gc

    from recsys.model import SideMFBlock

    def alive():
        return sum(isinstance(o, SideMFBlock) for o in gc.get_objects())

    gc.collect()
    before = alive()
    gc.disable()
    try:
        selection.ranking_table(prepared, choose=False, models=("side",), max_users=200,
                                on_model=lambda name, net, record: None)
        assert alive() == before
    finally:
        gc.enable()


def _check_standard_errors(table, test_users: int) -> None:
    """A hit rate p over n users has the standard error sqrt(p (1 - p) / (n - 1)): the n that each row's
    validation figures imply is a whole number of users, the same for every model (the warm users of one
    seeded sample of the validation split, so that the models are compared on the same users), and its
    test figures imply the test users ranked. A validation s.e. copied from the test split would imply a
    fraction of a user, or the test users."""
    implied = {}
    for name in table.index:
        row = table.loc[name]
        for split, p, se in (("val", row["val_hr_at_10"], row["val_hr_at_10_se"]),
                             ("test", row["hr_at_10"], row["hr_at_10_se"])):
            assert 0 < p < 1 and se > 0, (name, split)
            n = p * (1 - p) / se ** 2 + 1
            assert n == pytest.approx(round(n), abs=1e-6), (name, split, n)
            implied.setdefault(split, set()).add(round(n))
    assert implied["test"] == {test_users} and len(implied["val"]) == 1 and implied["val"] != {test_users}


def test_each_row_has_the_standard_errors_of_its_own_validation_and_test_hit_rates(prepared):
    """With the presets as they are (``choose=False``; the search's path is checked in the test above)."""
    table, _, _ = selection.ranking_table(prepared, choose=False, models=("side",), max_users=200)
    _check_standard_errors(table, test_users=200)
