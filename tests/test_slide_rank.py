"""Predicting and ranking a slide window by window (app/slides.py), in the batch beside ordinary
images on a real Dask cluster. Small tiles and windows keep a generated slide fast."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_hitl import io
from napari_hitl import project as store
from napari_hitl.app.rank import rank_results
from napari_hitl.app.session import Session
from napari_hitl.app.slides import PROBS, WindowResult, predict_slide, read_progress, window_results
from napari_hitl.errors import CorruptFileError
from napari_hitl.project import Project

torch = pytest.importorskip("torch")

H, W = 600, 700
SIZES = (256, 128, 32)  # window, tile, overlap


def _slide(path, shape=(H, W)):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, shape + (3,), dtype=np.uint8)
    img[100:300, 200:420] = 20  # some structure
    tifffile.imwrite(path, img, tile=(128, 128), photometric="rgb")
    return path


def _same_result(out, whole, windows=9):
    """``out`` (a stopped and resumed predict_slide) is ``whole``'s (a run never stopped): the same
    windows, scores and features within float noise, the same maps bit for bit."""
    import zarr

    assert out["windows"] == windows
    for k, v in whole["scores"].items():
        assert out["scores"][k] == pytest.approx(v, abs=1e-6), k
    np.testing.assert_allclose(out["features"], whole["features"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(zarr.open_array(out["cache"], mode="r")[...]),
                                  np.asarray(zarr.open_array(whole["cache"], mode="r")[...]))


def _model():
    from napari_hitl.model.segnet import build_segnet

    torch.manual_seed(0)
    return build_segnet(3, pretrained=False)


def test_a_slide_is_scored_window_by_window_and_a_stopped_run_resumes(tmp_path):
    model = _model()
    path = _slide(tmp_path / "s.tif")
    with io.open_lazy(path) as img:
        whole = predict_slide(model, img, tmp_path / "whole", 3, window=256, tile=128, overlap=32)
        assert whole["windows"] == 3 * 3 and whole["cache"].endswith(PROBS)
        ticks = []
        with pytest.raises(KeyboardInterrupt):
            predict_slide(model, img, tmp_path / "part", 3, window=256, tile=128, overlap=32,
                          progress=lambda k, n: ticks.append(k), should_stop=lambda: len(ticks) >= 30)
        assert len(list((tmp_path / "part" / "windows").glob("row-*.npz"))) == 1  # rows 0..256 were final
        again = []
        part = predict_slide(model, img, tmp_path / "part", 3, window=256, tile=128, overlap=32,
                             progress=lambda k, n: again.append(k))
        # other window sizes: nothing is reused (the old window rows would not fit)
        other = predict_slide(model, img, tmp_path / "part2", 3, window=256, tile=128, overlap=32)
        other = predict_slide(model, img, tmp_path / "part2", 3, window=128, tile=128, overlap=32)
        assert other["windows"] == 5 * 6 and other["tiles_predicted"] == 42
    n_cols = 7  # tiles of 128 with 32 overlap over 700 px
    assert again[0] > n_cols and len(again) < 42  # the finished bands were not predicted again
    _same_result(part, whole)


def test_a_run_stopped_while_scoring_windows_predicts_no_tile_again_for_them(tmp_path):
    model = _model()
    path = _slide(tmp_path / "s.tif")
    feats = lambda: list((tmp_path / "f" / "windows").glob("features-*.npy"))  # noqa: E731
    with io.open_lazy(path) as img:  # windows of 128, tiles of 160 (step 128): 5 x 6 tiles, 5 x 6 windows
        whole = predict_slide(model, img, tmp_path / "w", 3, window=128, tile=160, overlap=32)
        with pytest.raises(KeyboardInterrupt):  # the second row of windows is pooled, then stopped in its scoring
            predict_slide(model, img, tmp_path / "f", 3, window=128, tile=160, overlap=32,
                          should_stop=lambda: len(feats()) >= 2)
        assert len(feats()) == 2 and len(list((tmp_path / "f" / "windows").glob("row-*.npz"))) == 1
        again = predict_slide(model, img, tmp_path / "f", 3, window=128, tile=160, overlap=32)
    # bands to row 256 were written: only the tile rows from 128 on (the blend at 256 needs that one)
    assert whole["tiles_predicted"] == 30 and again["tiles_predicted"] == 4 * 6
    assert again["scores"] == pytest.approx(whole["scores"], abs=1e-6)
    np.testing.assert_allclose(again["features"], whole["features"], rtol=1e-5, atol=1e-6)


def test_a_stopped_slide_run_goes_on_without_predicting_a_tile_row_again(tmp_path):
    """Stopped (a click while the slide batch runs), the run saves what the finished tile rows added
    past the last written band (the blend's carry, the window rows' feature sums): the next run
    predicts only the tile rows not finished, and its maps, scores and features are those of a run
    never stopped. Without the saved sums (a killed run) it replays the tile rows as before."""
    from napari_hitl.app.slides import PARTIAL, WINDOWS

    model = _model()
    path = _slide(tmp_path / "s.tif")
    # tiles of 128 with 32 overlap: 6 tile rows (y 0, 96, 192, 288, 384, 472) of 7; windows of 256
    with io.open_lazy(path) as img:
        whole = predict_slide(model, img, tmp_path / "whole", 3, window=256, tile=128, overlap=32)
        for name in ("part", "killed"):
            ticks = []
            with pytest.raises(KeyboardInterrupt):  # stopped after 30 tiles: 4 rows and 2 tiles of the 5th
                predict_slide(model, img, tmp_path / name, 3, window=256, tile=128, overlap=32,
                              progress=lambda k, n: ticks.append(k), should_stop=lambda: len(ticks) >= 30)
        assert (tmp_path / "part" / WINDOWS / PARTIAL).is_file()
        (tmp_path / "killed" / WINDOWS / PARTIAL).unlink()  # as a killed run leaves it: nothing saved
        part = predict_slide(model, img, tmp_path / "part", 3, window=256, tile=128, overlap=32)
        killed = predict_slide(model, img, tmp_path / "killed", 3, window=256, tile=128, overlap=32)
    assert part["tiles_predicted"] == 2 * 7  # the tile rows at 384 and 472: none of the 4 finished again
    assert killed["tiles_predicted"] == 4 * 7  # replayed from the tile row at 192 (window row 256's features)
    assert not (tmp_path / "part" / WINDOWS / PARTIAL).exists() and not list((tmp_path / "part").glob("*.carry.npz"))
    for out in (part, killed):
        _same_result(out, whole)
    for row in sorted((tmp_path / "whole" / WINDOWS).glob("row-*.npz")):
        with np.load(row) as a, np.load(tmp_path / "part" / WINDOWS / row.name) as b:
            np.testing.assert_allclose(b["features"], a["features"], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(b["scores"], a["scores"], atol=1e-6)


def test_windows_rank_beside_images_and_replace_their_slides_row():
    f = np.zeros(4, np.float32)
    results = {"a": {"scores": {"consistency": 0.5, "margin_uncertainty": 0.2}, "features": f},
               "s": {"scores": {"consistency": 0.9, "margin_uncertainty": 0.1}, "features": f}}
    windows = [WindowResult("s", (0, 0, 256, 256), {"consistency": 0.95, "margin_uncertainty": 0.05}, f),
               WindowResult("s", (256, 512, 512, 700), {"consistency": 0.1, "margin_uncertainty": 0.6}, f)]
    rows = rank_results(["a", "s", "b"], results, "local consistency", windows=windows)
    assert [(r.name, r.window) for r in rows] == [("s", (256, 512, 512, 700)), ("a", None), ("s", (0, 0, 256, 256)),
                                                   ("b", None)]
    assert rows[0].label == "s, window (256, 512)" and rows[1].label == "a"
    for choice in ("diversity", "coverage", "entropy"):
        assert len(rank_results(["a", "s", "b"], results, choice, windows=windows, labelled=["a"])) == 4


@pytest.fixture
def slide_project(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(io, "LAZY_PIXELS", 300 * 300)
    monkeypatch.setattr(store, "SLIDE_CHUNK", 256)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _slide(imgs / "slide.tif")
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(imgs / f"im{i}.png")
    p = Project.create(tmp_path / "p", imgs, classes=["background", "cell", "nucleus"])
    assert p.is_slide("slide")
    return p


def test_windows_a_person_labelled_rank_after_the_others_and_are_never_picked(slide_project):
    """As the panel puts images a person finished last and coverage counts labelled images as
    covered: a window holding a person's labels (saved objects, from the index) ranks after every
    other predicted row and is never a pick, however unsure its prediction; machine labels do not count."""
    from napari_hitl.app.slides import labelled_windows

    project = slide_project
    obj = np.zeros((40, 40), np.int32)
    obj[5:30, 5:30] = 1
    project.commit_window("slide", obj, {1: 1}, offset=(300, 20), source="human")     # window (256, 0)
    project.commit_window("slide", obj, {1: 2}, offset=(20, 300), source="machine")   # window (0, 256)
    rng = np.random.default_rng(0)
    boxes = [(y, x, min(H, y + 256), min(W, x + 256)) for y in (0, 256, 512) for x in (0, 256, 512)]
    held = (256, 0, 512, 256)

    def scores(unsure):
        return {"consistency": 1 - unsure, "entropy": unsure, "margin_uncertainty": unsure,
                "object_fraction": 0.3, "unsure_fraction": unsure, "object_uncertainty": unsure}

    windows = [WindowResult("slide", b, scores(0.9 if b == held else 0.1 + 0.05 * i),
                            rng.normal(size=8).astype(np.float32)) for i, b in enumerate(boxes)]
    assert labelled_windows(project, windows) == {("slide", held)}
    results = {n: {"scores": scores(0.2), "features": rng.normal(size=8).astype(np.float32), "cache": ""}
               for n in ("im0", "im1", "im2", "slide")}
    session = Session(project)
    session.predictions.use("m", results, windows)
    for choice in ("local consistency", "entropy", "margin", "least certain objects", "diversity", "coverage"):
        rows = session.rank(choice)
        assert len(rows) == 3 + 9
        at = [i for i, r in enumerate(rows) if r.window == held]
        assert at == [len(rows) - 1], choice  # its prediction is the least sure: before, it came first
        assert not rows[-1].picked
    # the machine-labelled window ranks by its score as before
    rows = session.rank("margin")
    assert [r.window for r in rows[:4]] == [boxes[8], boxes[7], boxes[6], boxes[5]]


@pytest.mark.slow
def test_the_batch_predicts_and_ranks_a_slide_beside_images_and_resumes_it(slide_project):
    from distributed import Client

    from napari_hitl.app.batch import local_cluster, model_bytes, predict_project

    with Session(slide_project) as session, local_cluster(1) as cluster, Client(cluster) as client:
        token = model_bytes(session.model)[1]
        folder = session.project.cache_dir / "predictions" / token / "slide.slide"
        seen = []
        part = predict_project(session, client, slide_sizes=SIZES, poll=0.05,
                               progress=lambda k, n: seen.append((k, n)),
                               should_stop=lambda: read_progress(folder) >= 12)
        assert part.cancelled and "slide" not in part.predicted and "slide" not in part.failed
        assert seen[0] == (0, 3 + 42) and any(0 < k < 42 for k, _ in seen)  # a slide counts its 6 x 7 tiles
        rest = predict_project(session, client, slide_sizes=SIZES, progress=lambda k, n: seen.append((k, n)))
        assert not rest.failed and "slide" in rest.predicted and seen[-1] == (45, 45)
        assert sorted(part.predicted + rest.predicted) == session.names
        session.predicted(rest)
        assert "slide" not in session.predictions and len(session.predictions) == 3  # its maps are never loaded
        rows = session.rank("local consistency")
        wins = [r for r in rows if r.window is not None]
        assert len(wins) == 9 and {r.name for r in wins} == {"slide"} and len(rows) == 3 + 9
        assert all(np.isfinite(r.value) for r in rows)
        assert [r.value for r in rows] == sorted(r.value for r in rows)  # least consistent first
        # a damaged window file is named, not half read
        row = folder / "windows" / "row-0.npz"
        row.write_bytes(b"not an npz")
        with pytest.raises(CorruptFileError, match="window scores of slide 'slide'"):
            window_results(session.project, session.project.results(token))


def test_labels_on_one_window_of_a_slide_teach_the_model(tmp_path, monkeypatch):
    """A 2048 x 2048 tiled TIFF slide with labels in one 1024 px chunk: training reads that chunk
    (image window and labels) alone, and every crop the loss sees comes from it."""
    from napari_hitl.app.jobs import drive
    from napari_hitl.model import train as mtrain
    from napari_hitl.model.train import TrainSettings

    monkeypatch.setattr(io, "LAZY_PIXELS", 1000 * 1000)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _slide(imgs / "slide.tif", (2048, 2048))
    p = Project.create(tmp_path / "p", imgs, classes=["background", "cell"])
    assert p.is_slide("slide") and p.slide_chunk("slide") == 1024
    ids = np.zeros((300, 300), np.uint32)
    yy, xx = np.mgrid[:300, :300]
    ids[(yy - 150) ** 2 + (xx - 150) ** 2 < 60 ** 2] = 7
    p.commit_window("slide", ids, {7: 1}, offset=(1200, 1100))  # background and one cell, in chunk (1, 1)
    reads = []
    real = io.LazyImage.read
    monkeypatch.setattr(io.LazyImage, "read", lambda self, y0, x0, y1, x1, level=0: (
        reads.append((y1 - y0) * (x1 - x0)), real(self, y0, x0, y1, x1, level))[1])
    (smp,) = mtrain.samples_from_project(p)
    assert smp.name == "slide@1024,1024" and smp.image.shape[:2] == (1024, 1024)
    assert smp.labelled_pixels == 300 * 300 and int((smp.instances > 0).sum()) == int((ids > 0).sum())
    assert max(reads) == 1024 * 1024  # one chunk's window, never the slide
    seen = []
    real_crop = mtrain.Trainer._crop

    def crop(self, sample, *a, **k):
        out = real_crop(self, sample, *a, **k)
        seen.append((sample.name, float(out[2].sum())))  # the crop's loss weight
        return out

    monkeypatch.setattr(mtrain.Trainer, "_crop", crop)
    with Session(p) as session:
        job = session.train_job(TrainSettings(steps=3, batch_size=2, crop=64, checkpoint_every=0), None)
        figures = drive(job())
    assert figures.images == 1 and figures.human_pixels == 300 * 300 and np.isfinite(figures.loss_last)
    assert len(seen) == 6 and {n for n, _ in seen} == {"slide@1024,1024"}
    assert sum(wsum for _, wsum in seen) > 0  # the loss weighed slide pixels


@pytest.mark.slow
def test_a_worker_killed_mid_slide_is_retried_and_goes_on_from_the_written_bands(slide_project):
    import os
    import signal

    from distributed import Client

    from napari_hitl.app.batch import local_cluster, model_bytes, predict_project

    sizes = (128, 160, 32)  # a tile's step is the window: 5 x 6 tiles, 5 x 6 windows
    # two workers: the model's weights, sent once to each, outlive the one killed
    with Session(slide_project) as session, local_cluster(2) as cluster, Client(cluster) as client:
        token = model_bytes(session.model)[1]
        folder = session.project.cache_dir / "predictions" / token / "slide.slide"
        killed = []

        def kill_mid_slide(done, total):
            if read_progress(folder) >= 20 and not killed:  # 3 tile rows and 2 tiles: bands to row 384 written
                where = [w for w, keys in client.processing().items() if f"predict-{token}-slide" in keys]
                pid = client.run(os.getpid)[where[0]]  # the worker predicting the slide
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        report = predict_project(session, client, slide_sizes=sizes, poll=0.05, progress=kill_mid_slide)
        assert killed and not report.failed and not report.cancelled
        assert sorted(report.predicted) == session.names
        # the retry predicted the tile row at 256 again (the blend at row 384 needs it) and those after
        assert report.slides["slide"]["tiles_predicted"] == 3 * 6 and report.slides["slide"]["windows"] == 30
        events = [e["image"] for e in session.project.journal() if e["event"] == "predicted"]
        assert sorted(events) == session.names  # every image saved exactly once


@pytest.mark.parametrize("shape", [(600, 100), (100, 700), (90, 300)])
def test_a_narrow_slide_is_predicted_and_scored_with_windows_clipped_at_its_edges(tmp_path, shape):
    """A slide with a side shorter than one tile (30000 x 800 with the real sizes) gets one tile
    along that side, padded past the edge: it predicts, scores and resumes like any slide."""
    import zarr

    from napari_hitl.app.slides import tile_count

    model = _model()
    path = _slide(tmp_path / "s.tif", shape)
    h, w = shape
    with io.open_lazy(path) as img:
        ticks = []
        with pytest.raises(KeyboardInterrupt):
            predict_slide(model, img, tmp_path / "n", 3, window=256, tile=128, overlap=32,
                          progress=lambda k, n: ticks.append((k, n)), should_stop=lambda: len(ticks) >= 2)
        out = predict_slide(model, img, tmp_path / "n", 3, window=256, tile=128, overlap=32)
    n_rows, n_cols = -(-h // 256), -(-w // 256)
    assert out["windows"] == n_rows * n_cols
    assert ticks[0][1] == tile_count(shape, 128, 32)
    probs = np.asarray(zarr.open_array(out["cache"], mode="r")[...], np.float32)
    assert probs.shape == (3 + 2, h, w) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs[:3].sum(0), 1.0, atol=5e-3)
    assert all(np.isfinite(v) for v in out["scores"].values()) and np.isfinite(out["features"]).all()
    from napari_hitl.app.slides import _read_rows

    boxes, _, _ = _read_rows(tmp_path / "n", "s", shape)
    assert max(b[2] for b in boxes) == h and max(b[3] for b in boxes) == w  # clipped at the edges


def test_the_real_tile_count_of_a_narrow_slide():
    from napari_hitl.app.slides import OVERLAP, TILE, tile_count

    assert tile_count((30000, 800)) == tile_count((30000, 1152)) == len(range(0, 30000 - TILE, TILE - OVERLAP)) + 1
    assert tile_count((800, 800)) == 1


def test_a_narrow_slide_in_a_project_predicts_and_ranks_on_the_batch(tmp_path, monkeypatch):
    """The batch path (a real LocalCluster) of a project whose slide is narrower than one tile."""
    from distributed import Client

    from napari_hitl.app.batch import local_cluster, predict_project

    monkeypatch.setattr(io, "LAZY_PIXELS", 200 * 200)
    monkeypatch.setattr(store, "SLIDE_CHUNK", 256)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _slide(imgs / "narrow.tif", (600, 100))
    p = Project.create(tmp_path / "p", imgs, classes=["background", "cell", "nucleus"])
    assert p.is_slide("narrow")
    with Session(p) as session, local_cluster(1) as cluster, Client(cluster, set_as_default=False) as client:
        seen = []
        report = predict_project(session, client, slide_sizes=SIZES, poll=0.05, progress=lambda k, n: seen.append(k))
        assert not report.failed and report.predicted == ["narrow"] and seen[-1] == 6  # 6 x 1 tiles
        session.predicted(report)
        rows = session.rank("local consistency")
    assert sorted(r.window for r in rows) == [(0, 0, 256, 100), (256, 0, 512, 100), (512, 0, 600, 100)]
    assert all(np.isfinite(r.value) for r in rows)


def test_a_slide_without_its_own_pyramid_predicts_on_a_dask_worker(tmp_path, monkeypatch):
    """A slide above PYRAMID_MIN_SIDE with no pyramid in the file has coarsened levels (dask
    arrays); reading one on a worker (the model's contrast limits come from the coarsest level)
    must compute in the worker, not hand the graph to the worker's client (it cannot be pickled:
    the slide failed with 'Could not serialize object')."""
    from distributed import Client

    from napari_hitl.app.batch import local_cluster, predict_project

    monkeypatch.setattr(io, "LAZY_PIXELS", 300 * 300)
    monkeypatch.setattr(store, "SLIDE_CHUNK", 256)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _slide(imgs / "big.tif", (1100, 96))  # thin, so it predicts fast
    with io.open_lazy(imgs / "big.tif") as img:
        assert img.n_levels > 1 and not img.own_pyramid
    p = Project.create(tmp_path / "p", imgs, classes=["background", "cell", "nucleus"])
    with Session(p) as session, local_cluster(1) as cluster, Client(cluster, set_as_default=False) as client:
        assert float(getattr(session.model.get().model, "input_stretch", 0)) > 0  # so the coarsest level is read
        report = predict_project(session, client, slide_sizes=SIZES, poll=0.05)
    assert not report.failed, report.failed
    assert report.predicted == ["big"] and report.slides["big"]["windows"] == 5
