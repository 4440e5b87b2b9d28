"""Tests for diffsegmenter.images: every input kind becomes (H, W, 3) uint8 RGB; broken files fail loudly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffsegmenter.images import ImageLoadError, iter_image_paths, load_image


def _rgb(height: int = 12, width: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _check_rgb(array: np.ndarray, height: int, width: int) -> None:
    assert array.shape == (height, width, 3)
    assert array.dtype == np.uint8
    assert array.flags.c_contiguous


# ---------------------------------------------------------------------------------------------------- files


def test_png_path_roundtrip_exact(tmp_path: Path) -> None:
    pixels = _rgb()
    Image.fromarray(pixels).save(tmp_path / "a.png")
    for source in (tmp_path / "a.png", str(tmp_path / "a.png")):
        out = load_image(source)
        _check_rgb(out, 12, 16)
        np.testing.assert_array_equal(out, pixels)


def test_grayscale_png_becomes_three_equal_channels(tmp_path: Path) -> None:
    gray = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    _check_rgb(out, 12, 16)
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], gray)


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 257 * 100, 257 * 200, 65535, 65535 - 128]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as reloaded:
        assert reloaded.mode.startswith("I")
    out = load_image(tmp_path / "deep.png")
    _check_rgb(out, 1, 6)
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 100, 200, 255, 255])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_rgba_png_drops_alpha_keeps_colour(tmp_path: Path) -> None:
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[:2, :, 3] = 0  # fully transparent half keeps its stored colour
    rgba[2:, :, 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    out = load_image(tmp_path / "alpha.png")
    _check_rgb(out, 4, 5)
    assert (out == np.array([10, 20, 30], dtype=np.uint8)).all()


def test_la_and_palette_with_transparency(tmp_path: Path) -> None:
    la = Image.fromarray(np.full((3, 4, 2), (77, 0), dtype=np.uint8), mode="LA")
    la.save(tmp_path / "la.png")
    assert (load_image(tmp_path / "la.png") == 77).all()

    palette_image = Image.new("P", (4, 3), 1)
    palette_image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette_image.info["transparency"] = 1
    palette_image.save(tmp_path / "p.png", transparency=1)
    with Image.open(tmp_path / "p.png") as reloaded:
        assert reloaded.mode == "P" and "transparency" in reloaded.info
    out = load_image(tmp_path / "p.png")
    _check_rgb(out, 3, 4)
    assert (out == np.array([200, 100, 50], dtype=np.uint8)).all()


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as reloaded:
        assert reloaded.mode == "CMYK"
    out = load_image(tmp_path / "cmyk.jpg")
    _check_rgb(out, 8, 16)
    np.testing.assert_allclose(out.reshape(-1, 3).mean(axis=0), [255, 0, 0], atol=6)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = (255, 0, 0)  # left half red
    stored[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(stored).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "rot.jpg")
    _check_rgb(out, 40, 20)  # displayed upright: taller than wide
    top, bottom = out[:15].reshape(-1, 3).mean(axis=0), out[-15:].reshape(-1, 3).mean(axis=0)
    assert top[0] > 200 and top[2] < 50  # the stored left (red) column is now on top
    assert bottom[2] > 200 and bottom[0] < 50


def test_corrupt_file_raises_image_load_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageLoadError) as info:
        load_image(bad)
    assert isinstance(info.value, ValueError)
    assert info.value.path == str(bad)
    assert "bad.jpg" in str(info.value)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file_raises_image_load_error(tmp_path: Path, suffix: str) -> None:
    full = tmp_path / f"full{suffix}"
    Image.fromarray(_rgb(48, 64)).save(full)
    data = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(cut)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="folder"):
        load_image(tmp_path)


# ---------------------------------------------------------------------------------------------- PIL images


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I", "F"])
def test_pil_modes(mode: str) -> None:
    image = Image.new(mode, (7, 5))
    _check_rgb(load_image(image), 5, 7)


def test_pil_wide_modes_are_scaled() -> None:
    as_int = Image.fromarray(np.array([[0, 257 * 10, 65535]], dtype=np.int32), mode="I")
    np.testing.assert_array_equal(load_image(as_int)[0, :, 1], [0, 10, 255])
    as_float = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    np.testing.assert_array_equal(load_image(as_float)[0, :, 1], [0, 128, 255])


def test_pil_int32_image_with_8bit_values_reads_as_the_array_does(tmp_path: Path) -> None:
    # Image.fromarray(int32) / convert("I") / a 32-bit TIFF of 8-bit data were divided by 257 (a grey ramp up to 240
    # came out at most 1: a black image), while the same int32 array was read as 0..255
    ramp = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (4, 1))
    want = load_image(ramp)
    np.testing.assert_array_equal(load_image(ramp.astype(np.int32)), want)
    np.testing.assert_array_equal(load_image(Image.fromarray(ramp).convert("I")), want)
    Image.fromarray(ramp).convert("I").save(tmp_path / "g32.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "g32.tif"), want)
    # a dark 16-bit file stays 16-bit data (all values <= 255: at most 1 after scaling); Pillow opens a 16-bit
    # PGM as mode "I" (and 16-bit PNGs before Pillow 11)
    Image.fromarray(ramp.astype(np.uint16)).save(tmp_path / "dark16.pgm")
    with Image.open(tmp_path / "dark16.pgm") as pgm:
        assert pgm.mode == "I"
    assert load_image(tmp_path / "dark16.pgm").max() == 1


def test_big_endian_16bit_arrays_read_as_native_ones() -> None:
    # ">u2" (FITS, np.frombuffer) was refused as "must hold values in 0..255 ... pass 16-bit data as uint16"
    values = np.arange(12, dtype=np.uint16).reshape(2, 2, 3) * 5000
    np.testing.assert_array_equal(load_image(values.astype(">u2")), load_image(values))


def test_premultiplied_la_and_nan_float_images() -> None:
    la = Image.new("LA", (3, 2), (90, 255)).convert("La")
    np.testing.assert_array_equal(load_image(la), np.full((2, 3, 3), 90, np.uint8))
    nan = Image.fromarray(np.array([[0.5, np.nan]], np.float32), mode="F")
    with pytest.raises(ImageLoadError) as info:  # one message, not wrapped in "cannot convert PIL mode 'F'"
        load_image(nan)
    assert "NaN" in str(info.value) and "cannot convert" not in str(info.value)
    assert str(info.value).count("Could not load") == 1


def test_pil_image_not_modified() -> None:
    image = Image.new("RGBA", (3, 2), (1, 2, 3, 4))
    load_image(image)
    assert image.mode == "RGBA" and image.getpixel((0, 0)) == (1, 2, 3, 4)


# ------------------------------------------------------------------------------------------------ arrays


def test_array_inputs() -> None:
    gray = np.arange(6, dtype=np.uint8).reshape(2, 3)
    np.testing.assert_array_equal(load_image(gray)[..., 1], gray)
    np.testing.assert_array_equal(load_image(gray[:, :, None])[..., 2], gray)

    rgba = np.dstack([_rgb(2, 3), np.zeros((2, 3), np.uint8)])
    np.testing.assert_array_equal(load_image(rgba), rgba[..., :3])

    floats = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(load_image(floats)[0, :, 0], [0, 128, 255])

    deep = np.array([[0, 257 * 3, 65535]], dtype=np.uint16)
    np.testing.assert_array_equal(load_image(deep)[0, :, 0], [0, 3, 255])

    np.testing.assert_array_equal(load_image(np.array([[True, False]]))[0, :, 0], [255, 0])
    np.testing.assert_array_equal(load_image(np.array([[0, 7, 255]], dtype=np.int64))[0, :, 0], [0, 7, 255])


def test_array_output_is_a_copy() -> None:
    pixels = _rgb(3, 4)
    out = load_image(pixels)
    out[:] = 0
    assert pixels.any()


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.full((2, 2, 3), 2.0, dtype=np.float32), r"\[0, 1\]"),
        (np.array([[np.nan]]), "NaN"),
        (np.zeros((3, 8, 9), dtype=np.uint8), "channels-first"),
        (np.zeros((2, 2, 5), dtype=np.uint8), "shape"),
        (np.zeros((0, 4), dtype=np.uint8), "empty"),
        (np.array([[300]], dtype=np.int32), "0..255"),
        (np.zeros((2, 2), dtype=np.complex64), "dtype"),
    ],
)
def test_bad_arrays(array: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_image(array)


def test_bad_type() -> None:
    with pytest.raises(TypeError, match="path, a PIL"):
        load_image(42)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ iter_image_paths


def _touch_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2)).save(path, format="PNG")
    return path


def test_iter_image_paths_folder_glob_file(tmp_path: Path) -> None:
    b = _touch_image(tmp_path / "data" / "b.png")
    a = _touch_image(tmp_path / "data" / "a.JPG")
    nested = _touch_image(tmp_path / "data" / "sub" / "c.webp")
    (tmp_path / "data" / "notes.txt").write_text("x")
    _touch_image(tmp_path / "data" / ".hidden.png")
    _touch_image(tmp_path / "data" / ".cache" / "d.png")
    odd = tmp_path / "odd.dat"
    odd.write_bytes(b"explicitly named")

    assert iter_image_paths([str(tmp_path / "data")]) == [a, b, nested]
    assert iter_image_paths([str(tmp_path / "data" / "*.png")]) == [b]
    assert iter_image_paths([str(tmp_path / "data" / "**" / "*.webp")]) == [nested]
    # explicit files are kept whatever their suffix; duplicates are listed once, at their first position
    assert iter_image_paths([str(odd), str(b), str(tmp_path / "data")]) == [odd, b, a, nested]


def test_iter_image_paths_errors_name_the_input(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="missing.png"):
        iter_image_paths([str(tmp_path / "missing.png")])
    with pytest.raises(FileNotFoundError, match="empty"):
        iter_image_paths([str(tmp_path / "empty")])
    with pytest.raises(FileNotFoundError, match=r"\*\.tif"):
        iter_image_paths([str(tmp_path / "*.tif")])
    with pytest.raises(TypeError, match="wrap it"):
        iter_image_paths(str(tmp_path))  # type: ignore[arg-type]
