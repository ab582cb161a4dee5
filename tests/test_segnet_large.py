"""Prediction of an image larger than memory: overlapping tiles read one at a time, blended,
written band by band into zarr; the same probabilities as the in-memory tiled prediction."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_hitl import io
from napari_hitl.errors import InputError
from napari_hitl.model.segnet import build_segnet, predict_large, predict_with_features

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("with_instances", [False, True])
def test_predict_large_matches_the_tiled_prediction_in_memory(tmp_path, with_instances):
    torch.manual_seed(0)
    model = build_segnet(3, pretrained=False)
    img = np.random.default_rng(0).integers(0, 255, (300, 250, 3), dtype=np.uint8)
    img[100:180, 60:200] = 30  # some structure
    tifffile.imwrite(tmp_path / "a.tif", img, tile=(64, 64), photometric="rgb")
    want = predict_with_features(model, img, tile=96, overlap=32, with_features=False,
                                 with_instances=with_instances, size_norm=None)[0]  # predict_large: one scale
    done = []
    with io.open_lazy(tmp_path / "a.tif") as lazy:
        out = predict_large(model, lazy, tmp_path / "p.zarr", tile=96, overlap=32, with_instances=with_instances,
                            progress=lambda k, n: done.append((k, n)))
    assert out.shape == want.shape and out.dtype == np.float16
    np.testing.assert_allclose(np.asarray(out[...], np.float32), want, atol=2e-3)  # float16 storage
    assert done[-1][0] == done[-1][1] == len(done) == 5 * 4  # tiles of 96 px, 32 overlap: rows 0, 64, 128, 192, 204


@pytest.mark.parametrize("shape, tile", [((200, 200), 256), ((300, 70), 96), ((50, 250), 96)])
def test_an_image_with_a_side_shorter_than_a_tile_is_predicted_as_in_memory(tmp_path, shape, tile):
    """A narrow slide: one tile along the short side, padded past the edge as the in-memory
    prediction pads it (it used to be refused: "smaller than one tile")."""
    torch.manual_seed(0)
    model = build_segnet(3, pretrained=False)
    img = np.random.default_rng(2).integers(0, 255, shape + (3,), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", img, photometric="rgb")
    want = predict_with_features(model, img, tile=tile, overlap=32, with_features=False, with_instances=True,
                                 size_norm=None)[0]
    with io.open_lazy(tmp_path / "a.tif") as lazy:
        out = predict_large(model, lazy, tmp_path / "p.zarr", tile=tile, overlap=32, with_instances=True)
    assert out.shape == want.shape
    np.testing.assert_allclose(np.asarray(out[...], np.float32), want, atol=2e-3)


def test_predict_large_errors_and_cancel(tmp_path):
    model = build_segnet(2, pretrained=False)
    img = np.zeros((200, 200), np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", img, tile=(64, 64))
    with pytest.raises(InputError, match="LazyImage"):
        predict_large(model, img, tmp_path / "p.zarr")
    with io.open_lazy(tmp_path / "a.tif") as lazy:
        with pytest.raises(KeyboardInterrupt):
            predict_large(model, lazy, tmp_path / "p.zarr", tile=64, overlap=16, should_stop=lambda: True)


def test_predict_large_refuses_an_existing_output_and_leaves_it_intact(tmp_path):
    model = build_segnet(2, pretrained=False)
    img = np.random.default_rng(1).integers(0, 255, (128, 128), dtype=np.uint8)
    io.write_pyramid(io.open_lazy(_tiled(tmp_path, img)), tmp_path / "slide.zarr")
    with io.open_lazy(tmp_path / "slide.zarr") as lazy:
        with pytest.raises(InputError, match="exists"):
            predict_large(model, lazy, tmp_path / "slide.zarr", tile=64, overlap=16)  # its own input
    with io.open_lazy(tmp_path / "slide.zarr") as lazy:
        np.testing.assert_array_equal(lazy.read(0, 0, 128, 128), img)


def _tiled(tmp_path, img):
    tifffile.imwrite(tmp_path / "a.tif", img, tile=(64, 64))
    return tmp_path / "a.tif"


def test_a_stopped_resumable_prediction_goes_on_from_its_last_band_and_matches(tmp_path):
    from napari_hitl.model.segnet import large_rows_done

    torch.manual_seed(0)
    model = build_segnet(3, pretrained=False)
    img = np.random.default_rng(2).integers(0, 255, (300, 250, 3), dtype=np.uint8)
    img[100:180, 60:200] = 30
    tifffile.imwrite(tmp_path / "a.tif", img, tile=(64, 64), photometric="rgb")
    with io.open_lazy(tmp_path / "a.tif") as lazy:
        whole = np.asarray(predict_large(model, lazy, tmp_path / "whole.zarr", tile=96, overlap=32)[...])
        seen = []
        with pytest.raises(KeyboardInterrupt):  # stopped in the third tile row (4 tiles a row)
            predict_large(model, lazy, tmp_path / "p.zarr", tile=96, overlap=32, resume=True,
                          should_stop=lambda: len(seen) >= 10, progress=lambda k, n: seen.append(k))
        assert large_rows_done(tmp_path / "p.zarr") == 128  # bands [0, 64) and [64, 128) were written
        with pytest.raises(InputError, match="exists"):  # not resumable: refused, left alone
            predict_large(model, lazy, tmp_path / "p.zarr", tile=96, overlap=32)
        with pytest.raises(InputError, match="other settings|these settings"):
            predict_large(model, lazy, tmp_path / "p.zarr", tile=64, overlap=16, resume=True)
        again, rows = [], []
        out = predict_large(model, lazy, tmp_path / "p.zarr", tile=96, overlap=32, resume=True,
                            progress=lambda k, n: again.append(k), on_rows=rows.append)
        # only the tile row at 64 (reaching rows >= 128) is predicted again, then rows 128.. onwards
        assert again[0] == 4 + 1 and again[-1] == 20 and len(again) == 16
        assert rows == [192, 204, 300]
        np.testing.assert_array_equal(np.asarray(out[...]), whole)
        assert large_rows_done(tmp_path / "p.zarr") == 300
        feats = []  # a finished output: nothing is predicted again
        predict_large(model, lazy, tmp_path / "p.zarr", tile=96, overlap=32, resume=True,
                      on_features=lambda y, x, f: feats.append((y, x)))
        assert feats == []


@pytest.mark.parametrize("record", ['{"rows": 64}', '{"rows": 64, "shape": 7}', '{"rows": 64, "shape": ["a", "b"]}',
                                    '{"rows": 64, "shape": [3]}'])
def test_a_damaged_band_record_is_no_record(tmp_path, record):
    """A damaged ``<out>.done.json`` says nothing is resumable (None), it does not raise: a
    slide's cache folder is then started afresh instead of failing every run."""
    from napari_hitl.model.segnet import large_rows_done

    (tmp_path / "p.zarr").mkdir()
    (tmp_path / "p.zarr.done.json").write_text(record)
    assert large_rows_done(tmp_path / "p.zarr") is None
