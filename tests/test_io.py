"""Readers and writers: every format round-trips; bad files give errors naming them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_hitl import io
from napari_hitl.errors import CorruptFileError, InputError
from napari_hitl.project import Project


@pytest.mark.parametrize("suffix", [".tif", ".png", ".zarr"])
@pytest.mark.parametrize("hi", [1, 255, 300, 65535])
def test_labels_roundtrip(tmp_path, suffix, hi):
    labels = np.zeros((33, 47), np.uint32)
    labels[3:9, 4:20] = hi
    labels[20:, 30:] = 1
    path = io.write_labels(tmp_path / f"l{suffix}", labels)
    got = io.read_labels(path)
    np.testing.assert_array_equal(got, labels)
    if suffix == ".png":
        assert got.dtype == (np.uint8 if hi < 256 else np.uint16)
    io.write_labels(path, labels * 0)  # overwriting works (zarr folders included)
    assert io.read_labels(path).max() == 0


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_stack_roundtrip(tmp_path, suffix):
    labels = np.random.default_rng(1).integers(0, 70000, (4, 16, 18)).astype(np.uint32)
    np.testing.assert_array_equal(io.read_labels(io.write_labels(tmp_path / f"s{suffix}", labels)), labels)


def test_label_writer_errors(tmp_path):
    with pytest.raises(InputError, match="2-D"):
        io.write_labels(tmp_path / "x.png", np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(InputError, match="16-bit"):
        io.write_labels(tmp_path / "x.png", np.full((4, 4), 70000, np.uint32))
    with pytest.raises(InputError, match="integer"):
        io.write_labels(tmp_path / "x.tif", np.zeros((4, 4), np.float32))
    with pytest.raises(InputError, match="unknown label format"):
        io.write_labels(tmp_path / "x.bmp", np.zeros((4, 4), np.uint8))
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(CorruptFileError, match="bad.png"):
        io.read_labels(tmp_path / "bad.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(CorruptFileError, match="single-channel"):
        io.read_labels(tmp_path / "rgb.png")


def test_read_images(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 255, (10, 12, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    np.testing.assert_array_equal(io.read_image(tmp_path / "a.png"), rgba[..., :3])
    assert io.image_info(tmp_path / "a.png") == io.ImageInfo((10, 12), 3, 1, "uint8")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "b.jpg")
    assert io.read_image(tmp_path / "b.jpg").shape == (10, 12, 3)
    g16 = np.arange(120, dtype=np.uint16).reshape(10, 12) * 500
    tifffile.imwrite(tmp_path / "c.tif", g16)
    np.testing.assert_array_equal(io.read_image(tmp_path / "c.tif"), g16)
    stack = np.zeros((3, 10, 12, 3), np.uint8)
    tifffile.imwrite(tmp_path / "d.tif", stack, photometric="rgb")
    assert io.read_image(tmp_path / "d.tif").shape == (3, 10, 12, 3)
    assert io.image_info(tmp_path / "d.tif").frames == 3
    tifffile.imwrite(tmp_path / "e.tif", np.zeros((2, 3, 10, 12), np.uint8))
    assert io.read_image(tmp_path / "e.tif").shape == (2, 10, 12, 3)  # planar RGB frames
    assert io.image_info(tmp_path / "e.tif") == io.ImageInfo((10, 12), 3, 2, "uint8")
    tifffile.imwrite(tmp_path / "g.tif", np.zeros((10, 12, 2), np.uint8), photometric="minisblack", planarconfig="contig")
    with pytest.raises(InputError, match="gray"):
        io.read_image(tmp_path / "g.tif")
    (tmp_path / "f.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(CorruptFileError, match="f.jpg"):
        io.read_image(tmp_path / "f.jpg")
    with pytest.raises(InputError, match="does not exist"):
        io.read_image(tmp_path / "missing.png")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "x.json"
    io.atomic_write_json(target, {"v": 1})

    def failing(fh):
        fh.write(b'{"v": 2')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        io.atomic_write(target, failing)
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp file left behind


@pytest.mark.parametrize("fmt", ["tiff", "png", "zarr"])
def test_export_project(tmp_path, fmt):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((20, 30), np.uint8)).save(imgs / f"i{i}.png")
    tifffile.imwrite(imgs / "movie.tif", np.zeros((3, 20, 30), np.uint8), metadata={"axes": "TYX"})
    with Project.create(tmp_path / "p", imgs) as p:
        lab = np.zeros((20, 30), np.uint8)
        lab[:5] = 1
        p.commit_labels("i0", lab)
        p.commit_labels("i1", lab, source="machine")
        p.commit_labels("movie", lab, frame=1)
        manifest = json.loads(io.export_project(p, tmp_path / "out", fmt).read_text())
    assert manifest["format"] == fmt and [c["name"] for c in manifest["classes"]] == ["background", "object"]
    by = {e["name"]: e for e in manifest["images"]}
    assert by["i0"]["counts"]["human"] == 600 and by["i1"]["counts"]["machine"] == 600
    assert manifest["totals"]["human"] == 1200
    np.testing.assert_array_equal(io.read_labels(tmp_path / "out" / by["i0"]["labels"]), lab)
    assert (io.read_labels(tmp_path / "out" / by["i1"]["provenance"]) == 2).all()
    movie = by["movie"]["labels"]
    if fmt == "png":
        assert len(movie) == 3
        np.testing.assert_array_equal(io.read_labels(tmp_path / "out" / movie[1]), lab)
    else:
        np.testing.assert_array_equal(io.read_labels(tmp_path / "out" / movie)[1], lab)
    with pytest.raises(InputError, match="unknown export format"):
        io.export_project(p, tmp_path / "o2", "bmp")
