"""Identity-leak audit and pseudo-identities (connected components of the thresholded kNN graph)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from probes.audit import identity_leak_audit, pseudo_identities


def _people(n_people=12, per=5, dim=24, seed=0, spread=0.05):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_people, dim))
    pid = np.repeat(np.arange(n_people), per)
    X = centres[pid] + spread * rng.normal(size=(len(pid), dim))
    return X.astype(np.float32), pid


def test_pseudo_identities_recover_people():
    X, pid = _people()
    labels = pseudo_identities(X, threshold=0.9, k=6, device="cpu")
    # Same person <-> same component, exactly.
    same_true = pid[:, None] == pid[None, :]
    same_found = labels[:, None] == labels[None, :]
    assert np.array_equal(same_true, same_found)
    singletons = pseudo_identities(X, threshold=0.9999, k=6)
    assert len(set(singletons)) == len(X)
    with pytest.raises(ValueError, match="cosine similarity"):
        pseudo_identities(X, threshold=2.0)


def test_audit_detects_people_shared_between_train_and_test():
    X, pid = _people(n_people=20, per=6, seed=1)
    y = pid % 4  # 4 names, 5 people each
    ids = np.array([f"p{p}" for p in pid])
    leaky_test = np.arange(len(X)) % 6 == 0  # one image of every person in test
    a = identity_leak_audit(X[~leaky_test], X[leaky_test], y_train=y[~leaky_test], y_test=y[leaky_test],
                            threshold=0.9, identities_train=ids[~leaky_test], identities_test=ids[leaky_test],
                            k=5, device="cpu")
    assert a["share_nearest_above_threshold"] == 1.0 and a["share_test_identities_in_train"] == 1.0
    assert a["knn_accuracy"] == 1.0  # memorised people
    assert a["knn_accuracy_excluding_same_identity"] < 0.6  # names carry no signal beyond the person
    disjoint_test = pid >= 16
    b = identity_leak_audit(X[~disjoint_test], X[disjoint_test], y_train=y[~disjoint_test], y_test=y[disjoint_test],
                            threshold=0.9, identities_train=ids[~disjoint_test], identities_test=ids[disjoint_test],
                            k=5, device="cpu")
    assert b["share_nearest_above_threshold"] == 0.0 and b["share_test_identities_in_train"] == 0.0


def test_cli_identities_then_split_then_audit(tmp_path):
    from click.testing import CliRunner

    from probes.cli import main
    from tests.synthetic import planted_store

    # identity_scale >> noise: images of one person are near-duplicates under the toy model.
    store = planted_store(tmp_path / "s.zarr", n_names=4, images_per_person=4, dim=32, signal=0.5,
                          identity_scale=3.0, noise=0.1, seed=3, identities=False)
    runner = CliRunner()
    res = runner.invoke(main, ["identities", "--store", str(tmp_path / "s.zarr"), "--model", "toy",
                               "--threshold", "0.95", "--k", "5", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["name"] == "pseudo-toy-t0.95" and info["source"] == "pseudo-identity"
    n_people = len({i.rsplit("/", 1)[0] for i in store.index.image_ids})
    assert info["n_identities"] == n_people
    split = runner.invoke(main, ["split", "--store", str(tmp_path / "s.zarr"), "--by", "pseudo-identity:pseudo-toy-t0.95"])
    assert split.exit_code == 0, split.output
    name = json.loads(split.stdout)["name"]
    aud = runner.invoke(main, ["audit", "--store", str(tmp_path / "s.zarr"), "--model", "toy", "--split", name,
                               "--threshold", "0.95", "--k", "5", "--out", str(tmp_path / "r"), "--n-boot", "100"])
    assert aud.exit_code == 0, aud.output
    summary = json.loads((tmp_path / "r" / "track3_toy_audit_all" / "summary.json").read_text())
    assert summary["extra"]["audit"]["share_nearest_above_threshold"] == 0.0  # person-disjoint by pseudo-identity
    image_split = runner.invoke(main, ["audit", "--store", str(tmp_path / "s.zarr"), "--model", "toy", "--by", "image",
                                       "--threshold", "0.95", "--k", "5", "--out", str(tmp_path / "r2"),
                                       "--n-boot", "100"])
    assert image_split.exit_code == 0, image_split.output
    leaky = json.loads((tmp_path / "r2" / "track3_toy_audit_all" / "summary.json").read_text())
    assert leaky["extra"]["audit"]["share_nearest_above_threshold"] > 0.5
    assert any("leakage" in w for w in leaky["warnings"])


def test_calibrated_threshold_separates_people():
    from probes.audit import calibrate_threshold

    X, pid = _people(n_people=30, per=5, seed=2, spread=0.3)
    cal = calibrate_threshold(X, pid.astype(str), device="cpu")
    # Nearest other person: about 1% at or above the threshold (by construction); nearest same
    # person: almost always above it, since people here are tight clusters.
    assert cal["same_identity_nearest_at_or_above_threshold"] > 0.9
    assert cal["threshold"] == pytest.approx(cal["different_identity_nearest"]["0.99"])
    assert "99% quantile" in cal["rule"] and cal["expected_share_without_leak"] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="pass --threshold"):
        calibrate_threshold(X[:5], np.zeros(5).astype(str))


def test_audit_without_a_threshold_tells_a_disjoint_split_from_an_image_level_one(tmp_path):
    from click.testing import CliRunner

    from probes.cli import main
    from tests.synthetic import planted_store

    # Clustered planted data: each person's images are close, people are spread out.
    planted_store(tmp_path / "s.zarr", n_names=4, images_per_person=5, dim=32, signal=0.5, identity_scale=3.0,
                  noise=0.3, seed=4)
    runner = CliRunner()
    verdicts = {}
    for by in ("identity", "image"):
        res = runner.invoke(main, ["audit", "--store", str(tmp_path / "s.zarr"), "--model", "toy", "--by", by,
                                   "--k", "5", "--out", str(tmp_path / by), "--n-boot", "50", "--device", "cpu"])
        assert res.exit_code == 0, res.output
        summary = json.loads((tmp_path / by / "track3_toy_audit_all" / "summary.json").read_text())
        verdicts[by] = summary
        assert summary["extra"]["audit"]["threshold_source"] == "calibrated"
        assert "identity leak suspected" in res.output
    ok, leaky = verdicts["identity"], verdicts["image"]
    assert ok["extra"]["audit"]["headline"]["leak_suspected"] is False
    assert ok["extra"]["audit"]["share_test_identities_in_train"] == 0.0
    assert not any("leakage" in w for w in ok["warnings"])
    assert leaky["extra"]["audit"]["headline"]["leak_suspected"] is True
    assert leaky["extra"]["audit"]["share_test_identities_in_train"] > 0.5
    assert leaky["extra"]["audit"]["share_nearest_above_threshold"] > 0.5
    assert any("possible identity leakage" in w for w in leaky["warnings"])
    assert ok["control"]["kind"] == "leak audit"  # probes compare lists audits under Controls


def test_cli_audit_takes_val_and_test_fractions_for_the_split_it_makes(tmp_path):
    from click.testing import CliRunner

    from probes.cli import main
    from tests.synthetic import planted_store

    planted_store(tmp_path / "s.zarr", n_names=4, images_per_person=3, dim=8, seed=2)
    res = CliRunner().invoke(main, ["audit", "--store", str(tmp_path / "s.zarr"), "--model", "toy", "--val", "0.2",
                                    "--test", "0.3", "--k", "5", "--out", str(tmp_path / "r"), "--n-boot", "50",
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    split = json.loads((tmp_path / "r" / "track3_toy_audit_all" / "summary.json").read_text())["split"]
    assert (split["val"], split["test"]) == (0.2, 0.3) and split["name"].startswith("identity-v0.2-t0.3"), split
