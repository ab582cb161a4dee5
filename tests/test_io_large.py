"""Large images read lazily: TIFF (tiled, pyramidal, striped, contiguous) and zarr, window by window."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from napari_hitl import io
from napari_hitl.errors import CorruptFileError, InputError


def _rgb(h=600, w=500, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_tiled_pyramidal_tiff_uses_its_own_levels(tmp_path):
    a = _rgb()
    path = tmp_path / "slide.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(a, tile=(128, 128), subifds=1, compression="zlib", photometric="rgb")
        tw.write(a[::2, ::2], tile=(128, 128), subfiletype=1, compression="zlib", photometric="rgb")
    with io.open_lazy(path) as img:
        assert img.shape == (600, 500, 3) and img.dtype == np.uint8 and img.channels == 3
        assert img.own_pyramid and img.n_levels == 2
        assert img.level_shape(1) == (300, 250) and img.scale(1) == (2.0, 2.0)
        np.testing.assert_array_equal(img.read(130, 7, 390, 260), a[130:390, 7:260])
        np.testing.assert_array_equal(img.read(0, 0, 300, 250, level=1), a[::2, ::2])
        levels = img.levels()
        assert [lv.shape for lv in levels] == [(600, 500, 3), (300, 250, 3)]
        np.testing.assert_array_equal(levels[0][10:20, 30:40].compute(), a[10:20, 30:40])


@pytest.mark.parametrize("kind", ["striped", "contiguous"])
def test_tiff_without_pyramid_gets_coarsened_levels(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(io, "PYRAMID_MIN_SIDE", 100)
    a = np.random.default_rng(1).integers(0, 4000, (401, 300), dtype=np.uint16)
    path = tmp_path / "gray.tif"
    if kind == "striped":
        tifffile.imwrite(path, a, compression="zlib", rowsperstrip=32)
    else:
        tifffile.imwrite(path, a)
    with io.open_lazy(path) as img:
        assert img.shape == (401, 300) and not img.own_pyramid
        assert [img.level_shape(k) for k in range(img.n_levels)] == [(401, 300), (200, 150), (100, 75)]
        np.testing.assert_array_equal(img.read(33, 20, 250, 299), a[33:250, 20:299])
        want = a[:400].reshape(200, 2, 150, 2).mean(axis=(1, 3)).astype(np.uint16)
        np.testing.assert_array_equal(img.read(0, 0, 200, 150, level=1), want)
        lo, hi = img.value_range()
        small = img.read(0, 0, 100, 75, level=2).astype(np.float32)
        assert (lo, hi) == pytest.approx(tuple(np.percentile(small, (0.5, 99.8))))


def test_zarr_array_and_multiscale_group(tmp_path):
    a = _rgb(300, 260, seed=2)
    z = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=a.shape, dtype=a.dtype, chunks=(64, 64, 3))
    z[...] = a
    with io.open_lazy(tmp_path / "a.zarr") as img:
        assert img.shape == (300, 260, 3)
        np.testing.assert_array_equal(img.read(5, 6, 100, 200), a[5:100, 6:200])
    # an OME-NGFF-like group: channel-first levels listed in the multiscales attribute
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    for k, lv in enumerate([a, a[::2, ::2]]):
        arr = g.create_array(f"s{k}", shape=(3,) + lv.shape[:2], dtype=np.uint8, chunks=(3, 64, 64))
        arr[...] = np.moveaxis(lv, -1, 0)
    g.attrs["multiscales"] = [{"datasets": [{"path": "s0"}, {"path": "s1"}]}]
    with io.open_lazy(tmp_path / "g.zarr") as img:
        assert img.shape == (300, 260, 3) and img.own_pyramid and img.n_levels == 2
        np.testing.assert_array_equal(img.read(10, 0, 40, 260), a[10:40])
        np.testing.assert_array_equal(img.read(0, 0, 150, 130, level=1), a[::2, ::2])
        assert img.levels()[1].shape == (150, 130, 3)


def test_load_image_reads_small_images_whole_and_large_ones_lazily(tmp_path, monkeypatch):
    a = _rgb(64, 80)
    tifffile.imwrite(tmp_path / "a.tif", a, tile=(32, 32))
    got = io.load_image(tmp_path / "a.tif")
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, a)
    monkeypatch.setattr(io, "LAZY_PIXELS", 64 * 80 - 1)
    got = io.load_image(tmp_path / "a.tif")
    assert isinstance(got, io.LazyImage)
    np.testing.assert_array_equal(got.read(0, 0, 64, 80), a)
    got.close()
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 64, 80), np.uint8), photometric="minisblack")
    assert isinstance(io.load_image(tmp_path / "stack.tif"), np.ndarray)  # a time-lapse is never lazy


def test_lazy_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        io.open_lazy(tmp_path / "none.tif")
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(InputError, match="only TIFF and zarr"):
        io.open_lazy(tmp_path / "a.png")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage" * 3)
    with pytest.raises(CorruptFileError, match="bad.tif"):
        io.open_lazy(tmp_path / "bad.tif")
    tifffile.imwrite(tmp_path / "block.tif", np.zeros((64, 64), np.uint8), compression="zlib", rowsperstrip=64)
    with pytest.raises(InputError, match="tiled TIFF"):
        io.open_lazy(tmp_path / "block.tif")
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 64, 80), np.uint8), tile=(32, 32), photometric="minisblack")
    with pytest.raises(InputError, match="stack"):
        io.open_lazy(tmp_path / "stack.tif")
    tifffile.imwrite(tmp_path / "ok.tif", _rgb(64, 64), tile=(32, 32))
    with io.open_lazy(tmp_path / "ok.tif") as img:
        with pytest.raises(InputError, match="outside"):
            img.read(0, 0, 65, 10)
        with pytest.raises(InputError, match="level 3"):
            img.read(0, 0, 5, 5, level=3)
    # a damaged tile is found when it is read, and named with the file
    path = tmp_path / "damaged.tif"
    tifffile.imwrite(path, _rgb(128, 128), tile=(64, 64), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[3]
    raw = bytearray(path.read_bytes())
    raw[offset:offset + 40] = b"\xff" * 40
    path.write_bytes(bytes(raw))
    with io.open_lazy(path) as img:
        img.read(0, 0, 64, 64)  # an intact tile
        with pytest.raises(CorruptFileError, match="damaged.tif"):
            img.read(64, 64, 128, 128)


def test_as_float_rgb_with_a_fixed_range():
    img = np.array([[100, 200], [300, 400]], np.uint16)
    out = io.as_float_rgb(img, value_range=(100, 300))
    np.testing.assert_allclose(out[..., 0], [[0, 0.5], [1, 1]])
    assert io.as_float_rgb(np.full((2, 2), 255, np.uint8), value_range=(0, 1000)).max() == 1.0  # uint8 is /255


def test_level_views_slice_like_numpy_and_read_only_their_window(tmp_path, monkeypatch):
    a = _rgb(300, 260, seed=3)
    tifffile.imwrite(tmp_path / "a.tif", a, tile=(64, 64), photometric="rgb")
    with io.open_lazy(tmp_path / "a.tif") as img:
        view = img.arrays()[0]
        assert view.shape == (300, 260, 3) and view.dtype == np.uint8 and view.ndim == 3 and len(view) == 300
        for key in [(slice(10, 50), slice(3, 90)), (5,), (-1, slice(None, None, 7)), (slice(0, 300, 3), 17, 1),
                    (Ellipsis, 2), (slice(280, 400), slice(-20, None)), (slice(50, 40), slice(None))]:
            np.testing.assert_array_equal(view[key], a[key])
        np.testing.assert_array_equal(np.asarray(img.arrays()[-1]), img.read(0, 0, 300, 260, img.n_levels - 1))
        with pytest.raises(IndexError):
            view[300]
        with pytest.raises(IndexError):
            view[[1, 2]]
        reads = []
        original = io.LazyImage.read
        monkeypatch.setattr(io.LazyImage, "read", lambda self, *a, **k: reads.append(a) or original(self, *a, **k))
        view[100:120, 30:40]
        assert reads == [(100, 30, 120, 40, 0)]


def test_zarr_with_leading_singleton_axes(tmp_path):
    a = _rgb(200, 180, seed=4)
    z = zarr.open_array(str(tmp_path / "t.zarr"), mode="w", shape=(1, 1, 3, 200, 180), dtype=np.uint8,
                        chunks=(1, 1, 3, 64, 64))
    z[...] = np.moveaxis(a, -1, 0)[None, None]
    with io.open_lazy(tmp_path / "t.zarr") as img:
        assert img.shape == (200, 180, 3)
        np.testing.assert_array_equal(img.read(20, 30, 150, 170), a[20:150, 30:170])
        np.testing.assert_array_equal(img.levels()[0][5:9, 7:11].compute(), a[5:9, 7:11])
        np.testing.assert_array_equal(img.arrays()[0][5:9, 7:11], a[5:9, 7:11])
    z = zarr.open_array(str(tmp_path / "s.zarr"), mode="w", shape=(2, 1, 3, 20, 18), dtype=np.uint8)
    with pytest.raises(InputError, match="only single 2-D images"):
        io.open_lazy(tmp_path / "s.zarr")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_write_pyramid_gives_a_file_without_one_its_levels(tmp_path, monkeypatch, dtype):
    monkeypatch.setattr(io, "PYRAMID_MIN_SIDE", 60)
    rng = np.random.default_rng(5)
    a = rng.integers(0, 250 if dtype == np.uint8 else 60000, (301, 250, 3)).astype(dtype)
    tifffile.imwrite(tmp_path / "flat.tif", a, compression="zlib", rowsperstrip=16, photometric="rgb")
    done = []
    with io.open_lazy(tmp_path / "flat.tif") as flat:
        assert not flat.own_pyramid
        out = io.write_pyramid(flat, tmp_path / "pyr.zarr", chunk=64, progress=lambda k, n: done.append((k, n)))
        with io.open_lazy(out) as pyr:
            assert pyr.own_pyramid and pyr.n_levels == flat.n_levels == 4  # 301, 150, 75, 37
            for k in range(pyr.n_levels):
                h, w = pyr.level_shape(k)
                assert (h, w) == flat.level_shape(k)
                np.testing.assert_array_equal(pyr.read(0, 0, h, w, k), flat.read(0, 0, h, w, k))
    assert done[-1] == (5, 5)  # 5 bands of 64 rows at level 0: whole strips, each decoded once
    with pytest.raises(InputError, match="exists"):
        io.write_pyramid(io.open_lazy(tmp_path / "flat.tif"), out)
    with pytest.raises(InputError, match="zarr"):
        io.write_pyramid(io.open_lazy(tmp_path / "flat.tif"), tmp_path / "p.tif")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # nothing left behind


def test_gray_zarr_with_a_singleton_channel_axis_reads_the_right_pixels(tmp_path):
    # OME-NGFF (t, c, z, y, x) with one channel: the kept (1, H, W) has a length-1 axis itself
    a = np.random.default_rng(7).integers(0, 60000, (200, 180), dtype=np.uint16)
    z = zarr.open_array(str(tmp_path / "g.zarr"), mode="w", shape=(1, 1, 1, 200, 180), dtype=np.uint16,
                        chunks=(1, 1, 1, 64, 64))
    z[0, 0, 0] = a
    with io.open_lazy(tmp_path / "g.zarr") as img:
        assert img.shape == (200, 180)
        np.testing.assert_array_equal(img.read(10, 20, 30, 50), a[10:30, 20:50])
        np.testing.assert_array_equal(img.arrays()[0][5:9, 7:11], a[5:9, 7:11])


def test_gray_zarr_with_its_channel_first_gives_2d_levels(tmp_path):
    a = np.random.default_rng(8).integers(0, 60000, (200, 180), dtype=np.uint16)
    z = zarr.open_array(str(tmp_path / "c.zarr"), mode="w", shape=(1, 200, 180), dtype=np.uint16, chunks=(1, 64, 64))
    z[0] = a
    with io.open_lazy(tmp_path / "c.zarr") as img:
        assert img.shape == (200, 180)
        level = img.levels()[0]
        assert level.shape == (200, 180)  # as img.shape and arrays() say, not (200, 180, 1)
        np.testing.assert_array_equal(level[5:9, 7:11].compute(), a[5:9, 7:11])


def test_a_large_image_layer_that_fails_closes_its_file(tmp_path, monkeypatch):
    from napari_hitl.napari._layers import large_image_layer_data

    a = np.full((64, 64), 0.5, np.float32)
    a[3, 4] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", a, tile=(32, 32))
    closed = []
    original = io.LazyImage.close
    monkeypatch.setattr(io.LazyImage, "close", lambda self: closed.append(self.path) or original(self))
    with pytest.raises(InputError, match="NaN"):
        large_image_layer_data(tmp_path / "nan.tif")
    assert closed == [tmp_path / "nan.tif"]


def test_a_window_too_large_for_memory_is_not_called_a_damaged_file(tmp_path, monkeypatch):
    tifffile.imwrite(tmp_path / "a.tif", _rgb(64, 64), tile=(32, 32), photometric="rgb")
    with io.open_lazy(tmp_path / "a.tif") as img:
        def no_memory(*_):
            raise MemoryError("Unable to allocate 4.66 GiB")

        monkeypatch.setattr(img._levels[0], "read", no_memory)
        with pytest.raises(MemoryError):
            img.read(0, 0, 64, 64)


@pytest.mark.parametrize("planar", [False, True])
def test_write_pyramid_reads_each_strip_of_a_striped_tiff_once(tmp_path, monkeypatch, planar):
    a = _rgb(130, 700, seed=9)
    kw = {"planarconfig": "separate"} if planar else {}
    tifffile.imwrite(tmp_path / "s.tif", np.moveaxis(a, -1, 0) if planar else a, compression="zlib",
                     rowsperstrip=16, photometric="rgb", **kw)
    reads = []
    original = io.LazyImage.read
    monkeypatch.setattr(io.LazyImage, "read", lambda self, y0, x0, y1, x1, level=0:
                        reads.append((y0, x0, y1, x1, level)) or original(self, y0, x0, y1, x1, level))
    with io.open_lazy(tmp_path / "s.tif") as img:
        assert img._levels[0].chunks == (16, 700)  # a strip: 16 rows of the whole width
        out = io.write_pyramid(img, tmp_path / "p.zarr", chunk=64)
    # full-width bands of whole strips, not 64-wide pieces that decode every strip 11 times
    assert reads == [(0, 0, 64, 700, 0), (64, 0, 128, 700, 0), (128, 0, 130, 700, 0)]
    with io.open_lazy(out) as pyr:
        np.testing.assert_array_equal(pyr.read(0, 0, 130, 700), a)
