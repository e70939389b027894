"""The embedded `sample` dataset: real photos shipped inside scikit-image, so the default run needs nothing."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

# scikit-image's bundled photos (skimage/data, no download); natural photos of varied size, mode and aspect.
SAMPLE_PHOTOS = (
    "astronaut.png",  # 512x512 RGB
    "camera.png",  # 512x512 grayscale
    "chelsea.png",  # 451x300 RGB, a cat
    "coffee.png",  # 600x400 RGB, an espresso
    "rocket.jpg",  # 427x640 RGB
    "motorcycle_left.png",  # 741x497 RGB
    "hubble_deep_field.jpg",  # 872x1000 RGB
    "horse.png",  # 400x328 binary silhouette
)


def install_sample(dest: str | os.PathLike) -> list[str]:
    """Copy the scikit-image photos into `dest` (the sample dataset's root)."""
    import skimage

    src = Path(skimage.__file__).parent / "data"
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in SAMPLE_PHOTOS:
        shutil.copyfile(src / name, dest / name)
    return list(SAMPLE_PHOTOS)
