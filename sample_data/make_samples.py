"""Regenerate the shipped sample data from the DSB2018 stage-1 test images (BBBC038, CC0).

Run from the repository root: ``python sample_data/make_samples.py ../shared/data/dsb2018``.
Writes ``nuclei/images/*.png`` with semantic ``nuclei/labels/*.png`` (0 background, 1 nucleus)
and ``timelapse/`` (a 12-frame drift of one field as a multi-page TIFF with its labels).
"""

import sys
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage as ndi

PICKS = {  # dsb2018 id prefix -> shipped name
    "0a849e0eb15f": "fluo_small_nuclei",
    "4be73d68f433": "fluo_dense",
    "1d9eacb3161f": "tissue_he",
    "43a71aeb641f": "fluo_large",
}


def main(src: Path, out: Path) -> None:
    (out / "nuclei" / "images").mkdir(parents=True, exist_ok=True)
    (out / "nuclei" / "labels").mkdir(parents=True, exist_ok=True)
    for prefix, name in PICKS.items():
        (img_path,) = (src / "images").glob(prefix + "*.png")
        img = np.asarray(Image.open(img_path))[..., :3]
        if np.ptp(img.astype(int), axis=2).max() == 0:
            img = img[..., 0]  # gray stored as RGB(A)
        inst = np.asarray(Image.open(src / "labels" / img_path.name))
        Image.fromarray(img).save(out / "nuclei" / "images" / f"{name}.png", optimize=True)
        Image.fromarray((inst > 0).astype(np.uint8)).save(out / "nuclei" / "labels" / f"{name}.png", optimize=True)

    # time-lapse: a field drifting smoothly, labels moved identically (nearest neighbour)
    (img_path,) = (src / "images").glob("0a849e0eb15f*.png")
    img = np.asarray(Image.open(img_path))[..., 0].astype(np.float32)
    inst = np.asarray(Image.open(src / "labels" / img_path.name)) > 0
    rng = np.random.default_rng(0)
    frames, masks = [], []
    for t in range(12):
        dy, dx = 1.5 * t, 2.0 * t
        f = ndi.shift(img, (dy, dx), order=1, mode="reflect")[24:216, 16:208]
        m = ndi.shift(inst.astype(np.uint8), (dy, dx), order=0, mode="reflect")[24:216, 16:208]
        f = np.clip(f * (1 + 0.02 * np.sin(t)) + rng.normal(0, 2, f.shape), 0, 255)
        frames.append(f.astype(np.uint8))
        masks.append(m.astype(np.uint8))
    (out / "timelapse").mkdir(exist_ok=True)
    tifffile.imwrite(out / "timelapse" / "drift.tif", np.stack(frames), compression="zlib",
                     metadata={"axes": "TYX"})
    tifffile.imwrite(out / "timelapse" / "drift_labels.tif", np.stack(masks), compression="zlib",
                     metadata={"axes": "TYX"})


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/dsb2018"), Path(__file__).parent)
