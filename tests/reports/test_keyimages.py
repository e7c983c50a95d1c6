"""Key images: lung-windowed key slice with boxes, labels and axis lines; a lesion-centred crop."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lesionlens.dicom.display import apply_window, parse_window, window_grey
from lesionlens.dicom.types import DisplayInfo, Volume
from lesionlens.errors import OutputError
from lesionlens.pipeline.types import AxisLine, Lesion, Measurements, StudyResult
from lesionlens.reports.keyimages import (
    BOX_MARGIN_PX,
    CROP_PX,
    FOCUS,
    LONG_AXIS,
    OTHER,
    SHORT_AXIS,
    SLICE_MIN_PX,
    render_key_images,
)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> StudyResult:
    from pipeline.phantom_results import phantom_study

    return phantom_study(tmp_path_factory.mktemp("ki")).result


@pytest.fixture(scope="module")
def rendered(study: StudyResult, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    return render_key_images(study.series[0].volume, study.lesions, tmp_path_factory.mktemp("out") / "images")


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def _near(img: np.ndarray, x: float, y: float, colour: tuple[int, int, int], r: int = 2) -> bool:
    """Whether a pixel of ``colour`` lies within ``r`` px of (x, y)."""
    xi, yi = int(round(x)), int(round(y))
    win = img[max(yi - r, 0) : yi + r + 1, max(xi - r, 0) : xi + r + 1]
    return bool((np.abs(win - np.array(colour)).sum(axis=-1) <= 6).any())


def test_files_exist_with_the_expected_sizes(study: StudyResult, rendered: dict[str, dict[str, Path]]) -> None:
    assert set(rendered) == {les.tracking_id for les in study.lesions} and len(rendered) >= 3
    vol = study.series[0].volume
    assert vol.pixels.shape[1:] == (160, 160) and np.isclose(vol.spacing_mm[1], vol.spacing_mm[2])
    for tid, d in rendered.items():
        assert d["slice"].name == f"{tid}_slice.png" and d["crop"].name == f"{tid}_crop.png"
        assert d["slice"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # 160 px square pixels: the long side is raised to the 512 px minimum
        assert Image.open(d["slice"]).size == (SLICE_MIN_PX, SLICE_MIN_PX)
        assert Image.open(d["crop"]).size == (CROP_PX, CROP_PX)


def test_box_label_and_axes_are_drawn_at_the_lesion(study: StudyResult, rendered: dict[str, dict[str, Path]]) -> None:
    s = SLICE_MIN_PX / 160  # source → output scale
    for les in study.lesions:
        img = _rgb(rendered[les.tracking_id]["slice"])
        m = les.measurements
        assert m is not None and m.long_axis.k == les.key_k
        x1, y1, x2, y2 = (float(v) for v in les.bbox_px)
        bx1, by1, bx2, by2 = x1 * s - BOX_MARGIN_PX, y1 * s - BOX_MARGIN_PX, x2 * s + BOX_MARGIN_PX, y2 * s + BOX_MARGIN_PX
        xm, ym = (bx1 + bx2) / 2, (by1 + by2) / 2
        for x, y in ((bx1, ym), (bx2, ym), (xm, by1), (xm, by2)):  # midpoints of the 4 box edges
            assert _near(img, x, y, FOCUS), (les.tracking_id, x, y)
        # axis lines, a quarter of the way along each
        for line, colour in ((m.long_axis, LONG_AXIS), (m.short_axis, SHORT_AXIS)):
            qx = (0.75 * line.start[0] + 0.25 * line.end[0]) * s
            qy = (0.75 * line.start[1] + 0.25 * line.end[1]) * s
            assert _near(img, qx, qy, colour, r=1), (les.tracking_id, line)
        # yellow pixels exist only around the box and its label (above or below it)
        ys, xs = np.nonzero(np.abs(img - np.array(FOCUS)).sum(axis=-1) <= 6)
        assert xs.min() >= bx1 - 2 and ys.min() >= by1 - 40 and ys.max() <= by2 + 40
        # far from every lesion the image is grey (no overlay)
        corner = img[:40, :40]
        assert (corner[..., 0] == corner[..., 1]).all() and (corner[..., 1] == corner[..., 2]).all()


def test_slice_is_shown_in_the_lung_window(study: StudyResult, rendered: dict[str, dict[str, Path]]) -> None:
    vol = study.series[0].volume
    les = study.lesions[0]
    img = _rgb(rendered[les.tracking_id]["slice"])
    lung = window_grey(vol.pixels[les.key_k], parse_window("lung"), vol.display)
    assert np.array_equal(lung, apply_window(vol.pixels[les.key_k], -600, 1500))
    # a 10 x 10 source block in the top-left corner, 32 x 32 output px after upscaling
    src = float(lung[1:9, 1:9].mean())
    out = float(img[4 * 2 : 4 * 8, 4 * 2 : 4 * 8, 0].mean())
    assert abs(src - out) < 3.0
    soft = window_grey(vol.pixels[les.key_k], parse_window("soft-tissue"), vol.display)
    assert abs(float(soft[1:9, 1:9].mean()) - out) > 20  # a different window would look different


def test_crop_is_centred_on_the_lesion(study: StudyResult, rendered: dict[str, dict[str, Path]]) -> None:
    vol = study.series[0].volume
    spacing = float(vol.spacing_mm[2])
    for les in study.lesions:
        crop = _rgb(rendered[les.tracking_id]["crop"])
        ys, xs = np.nonzero(np.abs(crop - np.array(FOCUS)).sum(axis=-1) <= 6)
        assert abs((xs.min() + xs.max()) / 2 - CROP_PX / 2) <= 1.5, les.tracking_id
        assert abs((ys.min() + ys.max()) / 2 - CROP_PX / 2) <= 1.5, les.tracking_id
        m = les.measurements
        assert m is not None
        side_mm = max(4 * m.long_axis.length_mm, 64 * spacing)
        scale = CROP_PX / (side_mm / spacing)  # output px per source px
        x1, _, x2, _ = (float(v) for v in les.bbox_px)
        assert abs((xs.max() - xs.min() + 1) - ((x2 - x1) * scale + 2 * BOX_MARGIN_PX)) <= 2.5
        # the lesion (denser than lung) is bright at the centre of the crop
        c = crop[CROP_PX // 2 - 2 : CROP_PX // 2 + 3, CROP_PX // 2 - 2 : CROP_PX // 2 + 3, 0].mean()
        assert c > 110


def _lesion(tid: str, k: int, box: tuple[float, float, float, float], measured: bool = True) -> Lesion:
    x1, y1, x2, y2 = box
    yc, xc = (y1 + y2) / 2, (x1 + x2) / 2
    meas = None
    if measured:
        meas = Measurements(AxisLine(k, (x1, yc), (x2, yc), x2 - x1), AxisLine(k, (xc, y1), (xc, y2), y2 - y1),
                            (x2 - x1 + y2 - y1) / 2, x2 - x1, None, None, None, "solid", (x2 - x1 + y2 - y1) / 2)
    return Lesion(tid, "1.2.3", "nodule", 0.9, k, np.array(box, np.float32), (k, k), diameter_mm=x2 - x1,
                  measurements=meas)


def test_other_lesions_on_the_slice_are_boxed_too(tmp_path: Path) -> None:
    px = np.full((3, 128, 128), -800.0, np.float32)
    vol = Volume(pixels=px, affine=np.diag([2.0, 1.0, 1.0, 1.0]), modality="CT")
    a, b = _lesion("A", 1, (20, 20, 30, 30)), _lesion("B", 1, (80, 80, 96, 90))
    out = render_key_images(vol, [a, b], tmp_path)
    img = _rgb(out["A"]["slice"])
    s = SLICE_MIN_PX / 128
    assert _near(img, 20 * s - BOX_MARGIN_PX, 25 * s, FOCUS) and _near(img, 80 * s - BOX_MARGIN_PX, 85 * s, OTHER)
    img = _rgb(out["B"]["slice"])
    assert _near(img, 20 * s - BOX_MARGIN_PX, 25 * s, OTHER) and _near(img, 80 * s - BOX_MARGIN_PX, 85 * s, FOCUS)


def test_anisotropic_pixels_are_shown_square(tmp_path: Path) -> None:
    # rows 1.0 mm, columns 0.5 mm: 100 rows x 200 columns is 100 x 100 mm → a square image
    vol = Volume(pixels=np.zeros((1, 100, 200), np.float32), affine=np.diag([1.0, 1.0, 0.5, 1.0]), modality="CT")
    out = render_key_images(vol, [_lesion("L1", 0, (90, 40, 110, 50))], tmp_path)
    assert Image.open(out["L1"]["slice"]).size == (512, 512)


def test_2d_image_uses_its_own_window_and_unmeasured_box(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 4095, 300, dtype=np.float32), (200, 1))[None]  # (1, 200, 300)
    info = DisplayInfo(windows=[(1024.0, 2048.0)], invert=True)  # MONOCHROME1, header window
    vol = Volume(pixels=ramp, affine=np.diag([1.0, 0.1, 0.1, 1.0]), modality="DX", display=info)
    les = _lesion("M1", 0, (140, 90, 160, 110), measured=False)
    out = render_key_images(vol, [les], tmp_path)
    img = _rgb(out["M1"]["slice"])
    assert img.shape[:2] == (int(round(512 * 200 / 300)), 512)
    expected = 255 - apply_window(ramp[0], 1024, 2048)  # inverted header window, not the lung window
    sx = 512 / 300
    assert abs(int(img[5, int(100 * sx), 0]) - int(expected[3, 100])) <= 3
    assert abs(int(img[5, int(280 * sx), 0]) - int(expected[3, 280])) <= 3 and expected[3, 280] == 0
    assert _near(img, 140 * sx - BOX_MARGIN_PX, 100 * sx, FOCUS)
    assert Image.open(out["M1"]["crop"]).size == (CROP_PX, CROP_PX)


def test_file_names_come_from_tracking_ids_only(tmp_path: Path) -> None:
    vol = Volume(pixels=np.zeros((2, 64, 64), np.float32), affine=np.eye(4), modality="CT")
    evil = _lesion("../../x<y>", 0, (10, 10, 20, 20))
    dup = _lesion("x_y", 1, (30, 30, 40, 40))
    out = render_key_images(vol, [evil, dup], tmp_path / "img")
    names = sorted(p.name for p in (tmp_path / "img").iterdir())
    assert names == ["x_y_2_crop.png", "x_y_2_slice.png", "x_y_crop.png", "x_y_slice.png"]
    assert out["../../x<y>"]["slice"].parent == tmp_path / "img"


def test_unwritable_folder_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    vol = Volume(pixels=np.zeros((1, 64, 64), np.float32), affine=np.eye(4), modality="CT")
    with pytest.raises(OutputError, match="key image folder"):
        render_key_images(vol, [_lesion("L1", 0, (10, 10, 20, 20))], tmp_path / "file" / "images")


def test_large_study_is_fast(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    one = rng.normal(-700, 200, (512, 512)).astype(np.float32)
    px = np.broadcast_to(one, (300, 512, 512))  # 300 slices without 300 MB of memory
    vol = Volume(pixels=px, affine=np.diag([1.0, 0.7, 0.7, 1.0]), modality="CT")
    lesions = [_lesion(f"L{i + 1}", 30 + 50 * i, (100 + 60 * i, 200, 112 + 60 * i, 210)) for i in range(5)]
    render_key_images(vol, lesions[:1], tmp_path / "warm")
    t0 = time.perf_counter()
    out = render_key_images(vol, lesions, tmp_path / "img")
    elapsed = time.perf_counter() - t0
    assert len(out) == 5
    assert elapsed < 1.0, f"{elapsed:.2f} s"  # ~0.2 s alone on one core; generous for a shared machine
