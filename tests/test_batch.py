"""Batch prediction and ranking on a real Dask cluster (LocalCluster, worker processes; no mocks)."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from PIL import Image

from napari_hitl.app.rank import rank_results
from napari_hitl.app.session import Session
from napari_hitl.errors import CorruptFileError, InputError
from napari_hitl.project import Project


def _project(tmp_path, n=6):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(imgs / f"im{i}.png")
    return Project.create(tmp_path / "p", imgs, classes=["background", "cell"])


def test_results_are_saved_checked_and_ranked(tmp_path):
    with _project(tmp_path, n=3) as p:
        cache = p.cache_dir / "predictions" / "abcd" / "im0.zarr"
        p.save_result("im0", "abcd", {"consistency": 0.4, "entropy": 0.2, "margin_uncertainty": 0.3},
                      np.ones(8, np.float32), cache)
        p.save_result("im1", "abcd", {"consistency": 0.9, "entropy": 0.1, "margin_uncertainty": 0.1},
                      np.zeros(8, np.float32), p.cache_dir / "predictions" / "abcd" / "im1.zarr")
        got = p.results("abcd")
        assert set(got) == {"im0", "im1"} and got["im0"]["cache"] == cache and got["im0"]["features"].shape == (8,)
        assert p.results("ffff") == {}
        rows = rank_results([r.name for r in p.images], got, "local consistency")
        assert [r.name for r in rows] == ["im0", "im1", "im2"] and rows[2].value != rows[2].value  # im2: none
        light = p.results("abcd", features=False)  # what skipping finished images and a score ranking read
        assert light["im0"]["features"] is None and light["im0"]["scores"] == got["im0"]["scores"]
        assert [r.name for r in rank_results([r.name for r in p.images], light, "local consistency")] == \
            [r.name for r in rows]
        with pytest.raises(InputError, match="features"):
            rank_results([r.name for r in p.images], light, "diversity")
        with pytest.raises(InputError, match="hex"):
            p.save_result("im0", "../x", {}, np.zeros(1), cache)
        with pytest.raises(ValueError):  # a cache path outside the project's cache
            p.save_result("im0", "abcd", {}, np.zeros(1), tmp_path / "elsewhere.zarr")
        import sqlite3

        db = sqlite3.connect(p.root / "project.db")
        db.execute("UPDATE results SET cache = '../../etc' WHERE image = 1")
        db.commit()
        db.close()
        with pytest.raises(CorruptFileError, match="outside"):
            p.results("abcd")


@pytest.mark.slow
def test_predict_and_rank_on_two_worker_processes_and_resume(tmp_path):
    from distributed import Client

    from napari_hitl.app.batch import local_cluster, predict_project, read_probs

    with Session(_project(tmp_path)) as session, local_cluster(2) as cluster, Client(cluster) as client:
        seen = []
        report = predict_project(session, client, progress=lambda d, t: seen.append((d, t)))
        names = session.names
        assert sorted(report.predicted) == names and not report.failed and report.workers == 2
        assert seen[-1] == (6, 6)
        results = session.project.results(report.model)
        assert set(results) == set(names)
        probs = read_probs(session.project, "im3", report.model)
        # class probabilities (2), then the instance head's boundary and distance maps
        assert probs.shape == (1, 4, 48, 64) and np.allclose(np.asarray(probs)[:, :2].sum(axis=1), 1, atol=1e-2)
        assert "object_uncertainty" in results["im3"]["scores"]
        assert session.predictions.get("im3") is None  # the session uses the results once told
        session.predicted(report)
        pred = session.predictions["im3"][0]
        assert pred.instances is not None and pred.pred.shape == (48, 64)
        rows = rank_results(names, results, "local consistency")
        assert [r.name for r in rows if r.value == r.value] and len(rows) == 6
        again = predict_project(session, client)  # everything is done for this model: nothing runs
        assert again.predicted == [] and again.skipped == 6 and again.model == report.model
        assert sum(e["event"] == "predicted" for e in session.project.journal()) == 6


@pytest.mark.slow
def test_a_worker_killed_mid_run_loses_no_image_and_saves_none_twice(tmp_path):
    from distributed import Client

    from napari_hitl.app.batch import local_cluster, predict_project

    with Session(_project(tmp_path, n=10)) as session, local_cluster(2) as cluster, Client(cluster) as client:
        killed = []

        def kill_one(done, total):
            if done >= 1 and not killed:
                pids = client.run(os.getpid)
                pid = next(iter(pids.values()))
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        report = predict_project(session, client, progress=kill_one, in_flight=4)
        assert killed and not report.failed and not report.cancelled
        assert sorted(report.predicted) == session.names
        events = [e["image"] for e in session.project.journal() if e["event"] == "predicted"]
        assert sorted(events) == session.names  # every image saved exactly once


@pytest.mark.slow
def test_cancel_keeps_what_finished_and_the_next_run_goes_on(tmp_path):
    from distributed import Client

    from napari_hitl.app.batch import local_cluster, predict_project

    with Session(_project(tmp_path, n=8)) as session, local_cluster(1) as cluster, Client(cluster) as client:
        from napari_hitl.app.batch import model_bytes

        token = model_bytes(session.model)[1]
        part = predict_project(session, client, in_flight=2,
                               should_stop=lambda: len(session.project.results(token)) >= 3)
        assert part.cancelled and 3 <= len(part.predicted) < 8
        rest = predict_project(session, client)
        assert rest.skipped == len(part.predicted) and sorted(part.predicted + rest.predicted) == session.names


@pytest.mark.slow
def test_a_script_without_a_main_guard_can_run_a_batch(tmp_path):
    """napari is often started from a plain script; the local cluster must not re-run it."""
    import subprocess
    import sys

    _project(tmp_path, n=2).close()
    script = tmp_path / "plain.py"
    script.write_text(
        "from distributed import Client\n"
        "from napari_hitl.app.batch import local_cluster, predict_project\n"
        "from napari_hitl.app.session import Session\n"
        f"session = Session.open({str(tmp_path / 'p')!r})\n"
        "cluster = local_cluster(1)\n"
        "client = Client(cluster)\n"
        "report = predict_project(session, client)\n"
        "print('predicted', len(report.predicted))\n"
        "client.close(); cluster.close(); session.close()\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "predicted 2" in done.stdout
