"""The application session without a viewer: one commit path, answer counting, pseudo-labels,
and the ranking panel's orders."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_hitl.active.uncertainty import Prediction
from napari_hitl.app.jobs import drive
from napari_hitl.app.model_host import checkpoint_path
from napari_hitl.app.pseudo import commit_pseudo_labels
from napari_hitl.app.session import Session
from napari_hitl.project import HUMAN, MACHINE, PSEUDO, Project


@pytest.fixture
def session(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 30), dtype=np.uint8)).save(imgs / f"img{i}.png")
    with Session(Project.create(tmp_path / "proj", imgs, classes=["bg", "cell"])) as s:
        yield s


def test_every_answer_goes_through_commit_and_counts_towards_training(session):
    heard = []
    session.on("committed", lambda name, counts: heard.append((name, counts.human, counts.machine)))
    ones = np.ones((20, 30), np.uint8)
    top = np.zeros((20, 30), bool)
    top[:5] = True
    session.commit("img0", ones, source="human")
    session.commit("img1", ones, source="machine", where=top)  # an accepted suggestion
    assert heard == [("img0", 600, 0), ("img1", 0, 150)]
    assert session.answers_since_training == 2 and session.wants_training(2) and not session.wants_training(3)
    session.commit("img2", ones, source="pseudo")  # the machine's own guesses are no answers
    assert session.answers_since_training == 2
    session.trained(None)
    assert session.answers_since_training == 0 and len(session.predictions) == 0


def test_pseudo_labels_never_overwrite_human_or_accepted_pixels(session):
    lab = np.zeros((20, 30), np.uint8)
    lab[:, :10] = 1
    session.commit("img0", lab, source="human", where=lab == 1)
    right = np.zeros((20, 30), bool)
    right[:, 25:] = True
    session.commit("img0", np.ones((20, 30), np.uint8), source="machine", where=right)
    proba = np.zeros((2, 20, 30), np.float32)
    proba[0], proba[1] = 0.05, 0.95  # sure it is all class 1 ...
    proba[:, 15:, :] = 0.5            # ... except the bottom rows
    where, _ = commit_pseudo_labels(session.project, "img0", Prediction.from_probs(proba), delta=0.9)
    labels, prov = session.read_labels("img0")
    assert where.sum() == 15 * 15 and (prov[:15, 10:25] == PSEUDO).all() and (labels[:15, 10:25] == 1).all()
    assert (prov[:, :10] == HUMAN).all() and (prov[:, 25:] == MACHINE).all() and (prov[15:, 10:25] == 0).all()


def test_a_fresh_project_has_no_model_and_the_checkpoint_has_one_name(session):
    assert not session.model.trained
    assert checkpoint_path(session.project) == session.project.checkpoint_dir / "segnet.pt"
    assert drive(session.predict_job()(), should_stop=lambda: True) is None  # stopped before the first image


def test_coverage_ranking_puts_typical_images_of_unlabelled_regions_first():
    from napari_hitl.app.rank import rank_rows

    e = np.eye(3)
    # two feature regions: a (4 images, one labelled) and b (3 images); b's centre is 'b0'
    dirs = {"a0": e[0], "a1": e[0] + 0.2 * e[1], "a2": e[0] - 0.2 * e[1], "a3": e[0] + 0.2 * e[2],
            "b0": e[1], "b1": e[1] + 0.2 * e[0], "b2": e[1] - 0.2 * e[0]}
    names = list(dirs)
    preds = {}
    for k, (n, d) in enumerate(dirs.items()):
        m = np.full((8, 8), 0.1 * (k + 1), np.float32)  # margin uncertainty 1 - m shrinks down the list
        preds[n] = [Prediction(np.zeros((8, 8), np.uint8), 1 - m, m, m, d.astype(np.float32))]  # pooled, as the dock keeps
    rows = rank_rows(names, preds, "coverage", budget=1, labelled=["a0"])
    assert rows[0].name == "b0" and rows[0].picked and not any(r.picked for r in rows[1:])
    assert [r.name for r in rows[1:]] == ["a0", "a1", "a2", "a3", "b1", "b2"]  # the rest: most uncertain first
    # nothing labelled yet: the bigger region's centre comes first
    assert [r.name for r in rank_rows(names, preds, "coverage", budget=2) if r.picked] == ["a0", "b0"]


def test_training_is_a_generator_job_that_goes_on_after_a_stop(session):
    from napari_hitl.model.train import TrainSettings

    session.commit("img0", np.ones((20, 30), np.uint8))
    job = session.train_job(TrainSettings(steps=4, batch_size=1, crop=32, checkpoint_every=0), None)
    seen = []
    assert drive(job(), should_stop=lambda: len(seen) >= 2, progress=lambda *a: seen.append(a)) is None
    assert [s[:2] for s in seen] == [(1, 4), (2, 4)] and not session.model.trained  # a pause: no round yet
    figures = drive(job(), progress=lambda *a: seen.append(a))  # the same job again: steps 3 and 4
    assert [s[0] for s in seen] == [1, 2, 3, 4] and (figures.round, figures.steps, figures.images) == (1, 4, 1)
    assert figures.loss_first == seen[0][2] and session.model.trained and checkpoint_path(session.project).exists()


def test_the_sessions_dask_client_is_not_dasks_default_scheduler(session):
    """After Predict & rank starts the cluster, napari's lazily read images (dask arrays of an
    open file) are still computed here: as dask's default scheduler the client shipped them to
    the cluster, which cannot pickle an open file ('cannot read slide.tif')."""
    import dask
    import dask.array as da
    from distributed import default_client

    client = session.client()
    with pytest.raises(ValueError):
        default_client()
    assert dask.base.get_scheduler() is not client.get
    unpicklable = open(__file__, "rb")  # noqa: SIM115 (what a lazy TIFF reader holds)
    try:
        arr = da.from_delayed(dask.delayed(lambda f: np.full((4, 4), len(f.name)))(unpicklable), (4, 4), int)
        assert int(arr.sum().compute()) == 16 * len(unpicklable.name)
    finally:
        unpicklable.close()


def test_closing_with_dask_in_background_closes_the_project_now_and_the_cluster_after(session):
    """The dock closes a session on napari's UI thread: the project closes at once, the client and
    the local cluster's processes on a thread of their own (that takes 1-2 s)."""
    import time

    client = session.client()
    cluster = client.cluster
    session.close(dask_in_background=True)
    assert session.closed and session._dask is None
    t0 = time.monotonic()
    while (client.status != "closed" or cluster.status.name != "closed") and time.monotonic() - t0 < 60:
        time.sleep(0.1)
    assert client.status == "closed" and cluster.status.name == "closed"
