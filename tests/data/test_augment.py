from __future__ import annotations

import numpy as np
import pytest

from lesionlens.data.augment import AugmentConfig, Augmenter, clip_boxes, hflip, rotate_scale
from lesionlens.errors import ConfigError


def _blob_image(cx: float, cy: float, r: float, size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.full((3, size, size), -850.0, np.float32)
    img[:, (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r] = 40.0
    return img


def _bright_hull(img: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(img[1] > -400)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_hflip_moves_box_with_the_lesion() -> None:
    img = _blob_image(16, 30, 5)
    box = np.array([[11, 25, 21, 35]], np.float32)
    out, b = hflip(img, box)
    np.testing.assert_allclose(b[0], _bright_hull(out), atol=1.0)
    assert b[0, 0] == pytest.approx(64 - 21)


@pytest.mark.parametrize("angle,scale", [(0.0, 1.0), (10.0, 1.0), (-8.0, 1.2), (5.0, 0.85)])
def test_rotate_scale_box_follows_round_lesion(angle: float, scale: float) -> None:
    img = _blob_image(40, 22, 6)
    box = np.array([[34, 16, 46, 28]], np.float32)
    out, b = rotate_scale(img, box, angle, scale, fill=-1000.0)
    np.testing.assert_allclose(b[0], _bright_hull(out), atol=1.5)
    # outside the original field of view is air, never invented tissue
    assert out.min() >= -1000.0 - 1e-3


def test_clip_drops_boxes_that_leave_the_image() -> None:
    boxes = np.array([[-10, 5, -2, 12], [60, 60, 70, 70], [5, 5, 9, 9]], np.float32)
    b, lab = clip_boxes(boxes, np.array([0, 1, 2]), 64, 64, min_size=2)
    assert lab.tolist() == [1, 2]
    assert b[0].tolist() == [60, 60, 64, 64]


def test_disabled_augmenter_is_identity_and_enabled_is_seeded() -> None:
    img = _blob_image(30, 30, 4)
    box = np.array([[26, 26, 34, 34]], np.float32)
    lab = np.array([0])
    out, b, l2 = Augmenter(AugmentConfig(enabled=False))(img, box, lab)
    assert np.array_equal(out, img) and np.array_equal(b, box)
    a1 = Augmenter(seed=3)(img, box, lab)
    a2 = Augmenter(seed=3)(img, box, lab)
    assert np.array_equal(a1[0], a2[0]) and np.array_equal(a1[1], a2[1])
    # intensities stay physical: lesion still far brighter than lung
    assert a1[0][1].max() > -200 and np.median(a1[0][1]) < -700


def test_bad_probability_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="hflip"):
        AugmentConfig(hflip=1.5)
