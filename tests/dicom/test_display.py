"""VOI windowing (PS3.3 C.11.2.1.2), VOI LUT, MONOCHROME1 and presets against hand-computed levels."""

from __future__ import annotations

import numpy as np
import pytest

from lesionlens.dicom.display import (
    WINDOW_PRESETS,
    apply_voi_lut,
    apply_window,
    parse_window,
    to_display,
)
from lesionlens.dicom.types import DisplayInfo, Volume
from lesionlens.errors import ConfigError


def test_linear_hand_computed() -> None:
    # c=40, w=400: x <= -160 → 0, x > 239 → 255, else ((x - 39.5)/399 + 0.5)·255
    x = np.array([-1000, -160, 139.25, 239, 240], dtype=np.float32)
    out = apply_window(x, 40, 400, "LINEAR")
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, 191, 255, 255]  # 239 → (199.5/399+0.5)·255 = 255


def test_linear_exact_hand_computed() -> None:
    x = np.array([-50, -25, 25, 50, 51], dtype=np.float32)
    assert apply_window(x, 0, 100, "LINEAR_EXACT").tolist() == [0, 64, 191, 255, 255]


def test_sigmoid_hand_computed() -> None:
    x = np.array([0.0, 25.0, -25.0], dtype=np.float32)
    # 255 / (1 + exp(-4·x/100)): 127.5, 186.43, 68.57
    assert apply_window(x, 0, 100, "SIGMOID").tolist() == [128, 186, 69]


def test_sixteen_bit_output() -> None:
    out = apply_window(np.array([-50, 0, 50], dtype=np.float32), 0, 100, "LINEAR_EXACT", bits=16)
    assert out.dtype == np.uint16 and out.tolist() == [0, 32768, 65535]


def test_voi_lut_sequence_table() -> None:
    table = np.array([0, 128, 255])
    x = np.array([-20, -10, -9, -8, 100])
    assert apply_voi_lut(x, -10, 8, table).tolist() == [0, 0, 128, 255, 255]
    assert apply_voi_lut(x, -10, 8, table, bits=16).tolist() == [0, 0, 32896, 65535, 65535]


@pytest.mark.parametrize("name", sorted(WINDOW_PRESETS))
def test_presets_hit_black_and_white_at_the_window_edges(name: str) -> None:
    center, width = WINDOW_PRESETS[name]
    edges = np.array([center - width / 2, center, center + width / 2], dtype=np.float32)
    out = apply_window(edges, center, width)
    assert out[0] == 0 and out[2] == 255 and 126 <= out[1] <= 129


def test_preset_values() -> None:
    assert parse_window("lung").center == -600 and parse_window("lung").width == 1500
    assert (parse_window("mediastinum").center, parse_window("mediastinum").width) == (40, 400)
    assert (parse_window("brain").center, parse_window("brain").width) == (40, 80)
    assert parse_window("soft_tissue").name == "soft-tissue"
    assert parse_window("as-stored").as_stored
    w = parse_window("-600,1500")
    assert (w.center, w.width) == (-600.0, 1500.0)


@pytest.mark.parametrize("spec", ["lungs", "40", "40,0", "a,b"])
def test_bad_window_specs(spec: str) -> None:
    with pytest.raises(ConfigError, match="window"):
        parse_window(spec)


def _vol(pixels: np.ndarray, **display: object) -> Volume:
    return Volume(pixels=pixels.astype(np.float32), affine=np.eye(4), display=DisplayInfo(**display))  # type: ignore[arg-type]


def test_monochrome1_is_inverted() -> None:
    px = np.array([[[-50, 0, 50]]])
    normal = to_display(_vol(px), "0,100")
    inverted = to_display(_vol(px, invert=True, source_photometric="MONOCHROME1"), "0,100")
    assert normal[0, 0].tolist() == [0, 129, 255]  # LINEAR: ((0 + 0.5)/99 + 0.5)·255 = 128.8
    assert inverted[0, 0].tolist() == [255, 126, 0]


def test_as_stored_uses_header_window_then_lut_then_minmax() -> None:
    px = np.array([[[0, 50, 100]]])
    by_window = to_display(_vol(px, windows=[(50.0, 100.0)], voi_function="LINEAR_EXACT"))
    assert by_window[0, 0].tolist() == [0, 128, 255]
    by_lut = to_display(_vol(px, windows=[(50.0, 100.0)], voi_lut=(50, 8, np.array([10, 20]))))
    assert by_lut[0, 0].tolist() == [10, 10, 20]  # the VOI LUT wins over the window
    minmax = to_display(_vol(np.array([[[-1000, 0, 1000]]])), bits=16)
    assert minmax.dtype == np.uint16 and minmax[0, 0].tolist() == [0, 32768, 65535]


def test_colour_passes_through() -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (2, 3, 4, 3), dtype=np.uint8)
    vol = Volume(pixels=rgb, affine=np.eye(4))
    np.testing.assert_array_equal(to_display(vol, "lung"), rgb)


def test_bits_must_be_8_or_16() -> None:
    with pytest.raises(ConfigError, match="bits"):
        apply_window(np.zeros(2), 0, 10, bits=12)
