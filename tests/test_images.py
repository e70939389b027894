import numpy as np
import pytest
from PIL import Image

from visfeat.sources.images import ImageError, header_size, load_image


def test_edge_cases_decode_or_fail_with_reason(bad_dir):
    d, cases = bad_dir
    for path in sorted(d.iterdir()):
        image_id = path.stem
        expected = cases[image_id]
        if expected is None:
            im = load_image(path)
            assert im.mode == "RGB" and im.width > 0, image_id
        else:
            with pytest.raises(ImageError) as e:
                load_image(path)
            assert str(e.value).startswith(expected), (image_id, str(e.value))


def test_exif_rotation_applied_and_optional(bad_dir):
    d, _ = bad_dir
    p = d / "rotated.jpg"
    assert load_image(p).size == (64, 96)  # as people see it
    assert load_image(p, apply_exif=False).size == (96, 64)  # like PIL-based originals
    assert header_size(p) == (64, 96) and header_size(p, apply_exif=False) == (96, 64)
    a = np.asarray(load_image(p)).astype(int)
    b = np.rot90(np.asarray(load_image(p, apply_exif=False)), k=-1).astype(int)  # orientation 6 = rotate 90 CW
    assert np.abs(a - b).mean() < 1


def test_16bit_is_scaled_not_clipped(bad_dir):
    d, _ = bad_dir
    a = np.asarray(load_image(d / "gray16.png"))
    assert a.min() == 0 and a.max() == 255 and len(np.unique(a[..., 0])) > 200
    assert (a[..., 0] == a[..., 1]).all()


def test_cmyk_and_alpha_become_rgb(bad_dir):
    d, _ = bad_dir
    src = np.asarray(Image.open(d / "alpha.png").convert("RGB"))
    assert (np.asarray(load_image(d / "alpha.png")) == src).all()  # alpha dropped like PIL convert (the originals)
    cmyk = np.asarray(load_image(d / "cmyk.jpg")).astype(int)
    assert cmyk.shape[2] == 3 and cmyk.std() > 20


def test_max_pixels_option(sample_dir):
    with pytest.raises(ImageError, match="too large"):
        load_image(sample_dir / "coffee.png", max_pixels=1000)
