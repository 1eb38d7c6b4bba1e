import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import OCT
from recsys.artifacts import ModelDirError, Recommender, save_model
from recsys.prepare import prepare_files
from recsys.training import fit, predict


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    prepared = prepare_files([OCT], progress=False)
    result = fit(prepared, progress=False, epochs=2)
    model_dir = tmp_path_factory.mktemp("model")
    save_model(model_dir, result.net, prepared, dataclasses.asdict(result.config), {"hr_at_10": 0.1})
    return prepared, result, model_dir


def test_model_directory_contents(trained):
    prepared, result, d = trained
    config = json.loads((d / "config.json").read_text())
    assert config["architecture"] == {"max_users": prepared.n_users, "max_items": prepared.n_items, "num_emb": 64,
                                      "dropout_p": 0.5}
    assert config["hyperparameters"]["lr"] == 0.02 and config["hyperparameters"]["objective"] == "event_score"
    info = json.loads((d / "model_info.json").read_text())
    assert set(info["versions"]) == {"recsys", "mxnet", "numpy", "python"}
    assert len(info["data_fingerprint"]) == 64 and info["metrics"] == {"hr_at_10": 0.1}
    assert np.load(d / "user_ids.npy").tolist() == prepared.users["user_id"].tolist()
    # MMS takes any MANIFEST.json (any case, one level down too) for its own and stops: none here
    from recsys.sagemaker.bundle import mms_manifests

    assert mms_manifests(d) == []


def test_model_directory_saved_before_the_rename_still_loads_and_deploys(trained, tmp_path):
    """Old model directories have manifest.json: they load, and the deployable tarball renames it."""
    import shutil
    import tarfile

    from recsys.sagemaker.local import package_model

    prepared, _, d = trained
    old = tmp_path / "old"
    shutil.copytree(d, old)
    (old / "model_info.json").rename(old / "manifest.json")
    t = prepared.test.head(5)
    np.testing.assert_array_equal(Recommender.load(old).score(t["user_id"], t["product_id"]),
                                  Recommender.load(d).score(t["user_id"], t["product_id"]))
    with tarfile.open(package_model(old, tmp_path / "model.tar.gz")) as tar:
        names = tar.getnames()
    assert "model_info.json" in names and not [n for n in names if n.lower().endswith("manifest.json")]


def test_scores_equal_the_trained_network(trained):
    prepared, result, d = trained
    rec = Recommender.load(d)
    t = prepared.test
    expected = predict(result.net, t["user"].to_numpy(), t["item"].to_numpy())
    np.testing.assert_allclose(rec.score(t["user_id"], t["product_id"]), expected, rtol=1e-5, atol=1e-5)


def test_new_process_gives_identical_scores(trained, tmp_path):
    prepared, _, d = trained
    t = prepared.test.head(50)
    here = Recommender.load(d).score(t["user_id"], t["product_id"])
    code = ("import sys, json, numpy as np\nfrom recsys.artifacts import Recommender\n"
            "u, p = json.loads(sys.argv[2])\n"
            "print(json.dumps(Recommender.load(sys.argv[1]).score(u, p).tolist()))")
    r = subprocess.run([sys.executable, "-c", code, str(d), json.dumps([t["user_id"].tolist(), t["product_id"].tolist()])],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == here.tolist()


def test_unknown_ids_score_nan_and_recommend_falls_back(trained):
    prepared, _, d = trained
    rec = Recommender.load(d)
    u, p = int(prepared.test["user_id"].iloc[0]), int(prepared.test["product_id"].iloc[0])
    scores = rec.score([u, 1, u, 1], [p, p, 2, 2])
    assert np.isfinite(scores[0]) and np.isnan(scores[1:]).all()
    assert rec.known([u, 1], [p, p]).tolist() == [True, False]
    top = rec.recommend(u, 5, exclude=[p])
    assert len(top) == 5 and all(x["source"] == "model" for x in top) and p not in [x["product_id"] for x in top]
    assert [x["rank"] for x in top] == [1, 2, 3, 4, 5]
    assert top[0]["score"] >= top[-1]["score"]
    cold = rec.recommend(1, 3)
    popular = prepared.products["product_id"].to_numpy()[np.argsort(-rec.popularity, kind="stable")[:3]]
    assert [x["product_id"] for x in cold] == popular.tolist()
    assert all(x["source"] == "popularity" and x["score"] is None for x in cold)
    with pytest.raises(ValueError, match="2 user ids but 1 product ids"):
        rec.score([u, u], [p])


def test_damaged_or_missing_model_directory(trained, tmp_path):
    with pytest.raises(ModelDirError, match="missing"):
        Recommender.load(tmp_path)
    _, _, d = trained
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(d, copy)
    np.save(copy / "user_ids.npy", np.arange(3, dtype=np.int64))
    with pytest.raises(ModelDirError, match="user_ids.npy"):
        Recommender.load(copy)
