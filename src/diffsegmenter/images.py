"""Load user images (paths, PIL images, NumPy arrays) into one canonical form: ``(H, W, 3)`` uint8 RGB.

Every entry point of the package that accepts an image goes through [`load_image`], so the rules below hold
everywhere:

- EXIF orientation is applied (a portrait photo stored sideways comes out upright), so the labels returned by the
  segmenter line up with what an image viewer shows.
- Grayscale, palette, CMYK and YCbCr images are converted to RGB.
- Alpha is **dropped**, not composited: the colour channels are kept as stored. Compositing over white or black
  would invent a background colour that the model would then try to segment; dropping alpha keeps the pixels the
  user sees in most viewers for opaque regions and leaves transparent regions with whatever colour they store.
- 16-bit images are rescaled to 8 bit (``round(v / 257)``, so 65535 -> 255), never clipped.
- A corrupt or truncated file raises [`ImageLoadError`]; truncated images are never decoded silently (this module
  never sets ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``; if your own code sets it to ``True``, PIL will pad truncated
  files with grey and this module cannot tell).
- An animation or multi-page file (more than one frame) raises [`ImageLoadError`] instead of silently using its
  first frame; camera JPEGs with an embedded preview (MPO) are read as their main image.
- With ``max_pixels``, a larger image raises [`ImageTooLargeError`] before its pixels are decoded.

[`scan_inputs`] expands the files, folders and glob patterns given on a command line into image files, and lists
what it found but cannot use (with the reason) and what is not an image; [`iter_image_paths`] returns the image
files only.
"""

from __future__ import annotations

import dataclasses
import errno
import glob
import logging
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "UNSUPPORTED_IMAGE_EXTENSIONS",
    "ImageInput",
    "ImageLoadError",
    "ImageTooLargeError",
    "InputScan",
    "iter_image_paths",
    "load_image",
    "read_stored_pixels",
    "scan_inputs",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
"""Lower-case file suffixes that [`iter_image_paths`] picks up when it expands a folder or a glob pattern."""

UNSUPPORTED_IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".heic", ".heif", ".avif", ".jxl", ".svg", ".ico", ".icns", ".psd", ".tga", ".jp2", ".j2k", ".ppm", ".pgm",
     ".pbm", ".pnm", ".pcx", ".dds", ".eps", ".exr", ".hdr", ".raw", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf",
     ".raf", ".rw2", ".apng"}
)  # fmt: skip
"""Image file suffixes that a folder scan reports as skipped (an image type it does not read) instead of ignoring."""

ImageInput = str | os.PathLike | Image.Image | np.ndarray
"""Anything [`load_image`] accepts."""

_GLOB_CHARS = frozenset("*?[")
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


class ImageLoadError(ValueError):
    """An image file (or PIL image) could not be decoded into RGB pixels.

    Args:
        path (`str`):
            The file that failed, or a short description such as ``"<PIL.Image>"`` for in-memory images.
        reason (`str`):
            What went wrong, in words (for example ``"image file is truncated"``).
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(
            f"Could not load image {self.path!r}: {reason}. Check that the file is a complete, readable image "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}); re-export or re-download it if it is damaged."
        )


class ImageTooLargeError(ImageLoadError):
    """An image with more pixels than allowed (``SegmenterConfig.max_image_pixels``, CLI ``--max-pixels``).

    Raised before the pixels are decoded. Subclass of [`ImageLoadError`] (and `ValueError`).

    Args:
        path (`str`): the file, or a short description for in-memory images.
        width (`int`), height (`int`): the image size.
        max_pixels (`int`): the limit.
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, max_pixels: int) -> None:
        self.width, self.height, self.max_pixels = int(width), int(height), int(max_pixels)
        self.path = str(path)
        self.reason = (
            f"too large: {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
            "(--max-pixels, SegmenterConfig.max_image_pixels); downscale it, or raise the limit if the machine has "
            "the memory (about 100 bytes per pixel for a few classes)"
        )
        ValueError.__init__(self, f"Image {self.path!r} is {self.reason}.")


def _check_size(name: str, width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(name, width, height, max_pixels)


def load_image(image: ImageInput, *, max_pixels: int | None = None) -> np.ndarray:
    """Load an image into a fresh ``(H, W, 3)`` uint8 RGB array.

    Args:
        image (`str`, `os.PathLike`, `PIL.Image.Image` or `np.ndarray`):
            - a path to an image file (any format PIL reads);
            - a PIL image in any mode (``"1"``, ``"L"``, ``"LA"``, ``"P"``, ``"PA"``, ``"RGB"``, ``"RGBA"``,
              ``"CMYK"``, ``"YCbCr"``, ``"I;16"``, ``"I"``, ``"F"``...);
            - a NumPy array of shape ``(H, W)`` (gray), ``(H, W, 1)`` (gray), ``(H, W, 2)`` (gray + alpha),
              ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA), channels last, with dtype uint8 (0..255),
              uint16 (0..65535), bool, float (values in [0, 1]) or another integer type whose values lie in 0..255.
        max_pixels (`int`, *optional*): refuse images with more pixels (height x width) than this, before decoding
            them; None = no limit.

    Returns:
        `np.ndarray` of shape ``(H, W, 3)``, dtype uint8, values in [0, 255], C-contiguous. It never shares memory
        with the input. For files and PIL images, ``H, W`` are the size *after* EXIF orientation was applied.

    Raises:
        FileNotFoundError: the path does not exist.
        ImageLoadError: the file (or PIL image) is corrupt, truncated, not an image, an animation or multi-page
            file, or in a mode that cannot be converted to RGB. Subclass of `ValueError`.
        ImageTooLargeError: more pixels than ``max_pixels`` (a subclass of `ImageLoadError`).
        ValueError: an array with an unsupported shape, an empty array, non-finite values, or values outside the
            range its dtype implies (for example floats outside [0, 1]).
        TypeError: any other input type.
    """
    if isinstance(image, np.ndarray):
        if image.ndim >= 2:
            _check_size("<array>", image.shape[1], image.shape[0], max_pixels)
        return _array_to_rgb(image)
    if isinstance(image, Image.Image):
        name = getattr(image, "filename", "") or "<PIL.Image>"
        _check_size(name, image.width, image.height, max_pixels)
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageLoadError(name, str(exc) or type(exc).__name__) from exc
        return _pil_to_rgb(image, name)
    if isinstance(image, str) and re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", image):
        raise ValueError(
            f"{image!r} is a URL; images are not fetched from the network: download the file and pass its path, or "
            "pass a PIL image (e.g. PIL.Image.open(io.BytesIO(requests.get(url).content)))"
        )
    if isinstance(image, str | os.PathLike):
        return _load_path(Path(image), max_pixels)
    hint = " (for a torch tensor, pass tensor.permute(1, 2, 0).cpu().numpy())" if hasattr(image, "permute") else ""
    raise TypeError(
        f"load_image expects a path, a PIL.Image.Image or a numpy.ndarray, got {type(image).__name__}{hint}."
    )


def _load_path(path: Path, max_pixels: int | None = None, *, exif_orientation: bool = True) -> np.ndarray:
    if not path.exists():
        problem = _link_problem(path) if path.is_symlink() else None
        if problem is not None:
            raise ImageLoadError(path, problem)
        raise FileNotFoundError(f"Image file not found: {str(path)!r}.")
    if path.is_dir():
        raise ImageLoadError(path, "it is a folder, not a file (use iter_image_paths to expand folders)")
    try:
        with warnings.catch_warnings():
            if max_pixels is not None:  # our own limit governs; Pillow's decompression-bomb warning is redundant
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            pil = Image.open(path)
        with pil:
            _check_size(str(path), pil.width, pil.height, max_pixels)  # before any pixel is decoded
            frames = int(getattr(pil, "n_frames", 1) or 1)
            if frames > 1 and pil.format != "MPO":  # MPO: a camera JPEG with a preview; frame 0 is the photo
                raise ImageLoadError(
                    path,
                    f"it holds {frames} frames (an animation or a multi-page file) and only single images are "
                    "segmented; export the frame you want as a PNG",
                )
            # Decode now, inside the try: Image.open is lazy and a truncated file only fails on load().
            pil.load()
            return _pil_to_rgb(pil, str(path), exif_orientation=exif_orientation)
    except ImageLoadError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageLoadError(path, "not a recognised image format, or the file header is corrupt") from exc
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(
            path,
            f"{exc} (Pillow refuses images this large as decompression bombs: downscale it; a Python program that "
            "trusts the file can raise PIL.Image.MAX_IMAGE_PIXELS)",
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageLoadError(path, str(exc) or type(exc).__name__) from exc


def read_stored_pixels(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file's pixels in their **stored** orientation (no EXIF rotation), converted as [`load_image`]
    converts them (16-bit rescaled, alpha dropped, palette and grayscale to RGB).

    For datasets whose label maps are aligned with the stored pixels (VOC, COCO, ...), where applying EXIF
    orientation would misalign image and labels.

    Returns:
        `np.ndarray` of shape ``(H, W, 3)``, dtype uint8, values in [0, 255].

    Raises:
        FileNotFoundError: the path does not exist.
        ImageLoadError: as [`load_image`] raises it for a file (corrupt, not an image, several frames...).
    """
    return _load_path(Path(path), exif_orientation=False)


def _pil_to_rgb(pil: Image.Image, name: str, *, exif_orientation: bool = True) -> np.ndarray:
    """Apply EXIF orientation (unless ``exif_orientation=False``) and convert any PIL mode to a ``(H, W, 3)`` uint8
    RGB array."""
    oriented = pil
    if exif_orientation:
        try:
            oriented = ImageOps.exif_transpose(pil)
        except Exception as exc:  # a damaged EXIF block must not make a readable image unusable
            logger.warning("Ignoring unreadable EXIF orientation of %s: %s", name, exc)
            oriented = pil
        if oriented is None:  # only returned with in_place=True, kept for safety across Pillow versions
            oriented = pil
    mode = oriented.mode
    try:
        if mode == "RGB":
            return np.array(oriented, dtype=np.uint8)
        if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
            gray = _wide_gray_to_uint8(np.asarray(oriented), mode, name, _stored_bits(pil))
            return np.repeat(gray[:, :, None], 3, axis=2)
        if mode in ("P", "PA"):
            # Go through RGBA so that palette transparency is interpreted (and then dropped) rather than warned about.
            return np.array(oriented.convert("RGBA").convert("RGB"), dtype=np.uint8)
        if mode == "La":  # premultiplied: Pillow converts it to "LA" only
            oriented = oriented.convert("LA")
        if mode in ("LA", "La", "RGBa"):
            return np.array(oriented.convert("RGBA").convert("RGB"), dtype=np.uint8)
        # "1", "L", "RGBA", "RGBX", "CMYK", "YCbCr", "HSV"... : PIL's own conversion (alpha is dropped).
        return np.array(oriented.convert("RGB"), dtype=np.uint8)
    except ImageLoadError:
        raise  # already says what is wrong (a float image with NaN)
    except ValueError as exc:
        raise ImageLoadError(name, f"cannot convert PIL mode {mode!r} to RGB ({exc})") from exc


def _stored_bits(pil: Image.Image) -> int | None:
    """The bits per sample of a file's mode "I" pixels: what a TIFF says in tag 258, else 16 (Pillow opens 16-bit
    PNG, PGM and other files as mode "I"); None for an image made in memory (``Image.fromarray``,
    ``convert("I")``)."""
    if pil.format is None:
        return None
    if pil.format == "TIFF":
        bits = getattr(pil, "tag_v2", {}).get(258)
        bits = bits[0] if isinstance(bits, tuple) and bits else bits
        if isinstance(bits, int):
            return int(bits)
    return 16


def _wide_gray_to_uint8(values: np.ndarray, mode: str, name: str, bits: int | None = None) -> np.ndarray:
    """Scale a single-channel 16-bit, 32-bit integer or float PIL image to uint8 without clipping.

    Mode "I" (32-bit integers) holds 16-bit data (a file: 16-bit PNG as older Pillow opens it, PGM, a 16-bit TIFF;
    ``bits`` 16; or values above 255), scaled by 1/257, or 8-bit data in wider storage (values in 0..255 of an
    image made in memory, ``bits`` None, e.g. ``Image.fromarray(int32_array)`` or ``convert("I")``, or of a 32-bit
    TIFF), kept as they are, as an int32 array's values are; wider values are stretched min-max with a warning."""
    if mode in _SIXTEEN_BIT_MODES:
        return _scale_uint16(values.astype(np.uint16, copy=False))
    if mode == "I":
        lo, hi = int(values.min()), int(values.max())
        if lo >= 0 and hi <= 255 and bits in (None, 32):
            return values.astype(np.uint8)
        if lo >= 0 and hi <= 65535:  # a 16-bit PNG/TIFF decoded into 32-bit storage
            return _scale_uint16(values.astype(np.uint16))
        logger.warning("Image %s has 32-bit values in [%d, %d]; rescaling min-max to 0..255.", name, lo, hi)
        return _minmax_to_uint8(values.astype(np.float64))
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise ImageLoadError(name, "float image contains NaN or infinite values")
    if values.min() >= 0.0 and values.max() <= 1.0:
        return np.rint(values * 255.0).astype(np.uint8)
    logger.warning(
        "Float image %s has values in [%g, %g], not [0, 1]; rescaling min-max to 0..255.",
        name,
        values.min(),
        values.max(),
    )
    return _minmax_to_uint8(values)


def _scale_uint16(values: np.ndarray) -> np.ndarray:
    # 65535 / 257 == 255 exactly, so the full 16-bit range maps onto the full 8-bit range.
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _minmax_to_uint8(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.size == 0:
        raise ValueError(f"Cannot load an empty image array (shape {array.shape}).")
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 2, 3, 4):
        raise ValueError(
            f"Image array of shape {array.shape} looks channels-first; pass channels-last (H, W, C), "
            "for example array.transpose(1, 2, 0)."
        )
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ValueError(
            f"Image array must have shape (H, W), (H, W, 1), (H, W, 2), (H, W, 3) or (H, W, 4); got {array.shape}."
        )
    pixels = _to_uint8(array)
    channels = pixels.shape[2]
    if channels in (1, 2):  # gray (+ alpha, dropped)
        pixels = np.repeat(pixels[:, :, :1], 3, axis=2)
    else:  # RGB (+ alpha, dropped)
        pixels = pixels[:, :, :3]
    return np.ascontiguousarray(pixels) if not pixels.flags.c_contiguous else pixels


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Convert an array's values to uint8 according to its dtype; always returns a new array."""
    if not array.dtype.isnative:  # big-endian data (FITS, np.frombuffer(..., ">u2")) is the same numbers
        array = array.astype(array.dtype.newbyteorder("="))
    dtype = array.dtype
    if dtype == np.uint8:
        return array.copy()
    if dtype == np.bool_:
        return array.astype(np.uint8) * np.uint8(255)
    if dtype == np.uint16:
        return _scale_uint16(array)
    if np.issubdtype(dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("Image array contains NaN or infinite values.")
        lo, hi = float(array.min()), float(array.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"Float image arrays must hold values in [0, 1]; got values in [{lo:g}, {hi:g}]. "
                "Divide by 255 for 0..255 data, or convert to uint8/uint16 first."
            )
        return np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
    if np.issubdtype(dtype, np.integer):
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > 255:
            raise ValueError(
                f"Integer image arrays of dtype {dtype} must hold values in 0..255; got [{lo}, {hi}]. "
                "Pass 16-bit data as uint16, or floats in [0, 1]."
            )
        return array.astype(np.uint8)
    raise ValueError(f"Unsupported image array dtype {dtype}; use uint8, uint16, bool or float in [0, 1].")


@dataclasses.dataclass
class InputScan:
    """What [`scan_inputs`] found.

    Attributes:
        images (`list[Path]`): image files, in input order, each folder's or pattern's matches sorted by POSIX path;
            each file once.
        skipped (`list[tuple[Path, str]]`): things found that look like inputs but cannot be used, with the reason:
            an image type that is not read, a folder named like an image that holds none, a symbolic link loop or a
            broken link.
        ignored (`list[Path]`): files inside folders that are not images (text files, JSON...), and links to
            folders (not followed); worth a note, not an error.
    """

    images: list[Path] = dataclasses.field(default_factory=list)
    skipped: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    ignored: list[Path] = dataclasses.field(default_factory=list)


def scan_inputs(inputs: Iterable[str | os.PathLike]) -> InputScan:
    """Expand files, folders and glob patterns, keeping track of what cannot be used and why.

    - A file is kept as given, whatever its extension (naming a file is explicit); a named symbolic link loop or
      broken link is listed in ``skipped``.
    - A folder is searched recursively for files whose lower-cased suffix is in [`IMAGE_EXTENSIONS`]; files and
      folders whose name starts with ``"."`` (hidden files, macOS ``._*`` resource forks) are passed over. Files with
      a suffix of [`UNSUPPORTED_IMAGE_EXTENSIONS`], folders named like an image that hold no image, symbolic link
      loops and broken links are listed in ``skipped`` with the reason; other files in ``ignored``. Links to folders
      are not followed (``ignored``), so a link cycle cannot make the search endless.
    - A pattern containing ``*``, ``?`` or ``[`` is expanded with `glob.glob` (``**`` is recursive); its matches are
      treated as the contents of a folder, and matched folders are searched as above.

    Args:
        inputs (`Iterable[str | os.PathLike]`): paths and patterns.

    Returns:
        [`InputScan`]. An input that names nothing adds nothing (see [`iter_image_paths`] for the error).

    Raises:
        TypeError: `inputs` is a single string or path instead of a list of them.
    """
    if isinstance(inputs, str | os.PathLike):
        raise TypeError(
            f"expected a list of paths, got the single path {str(inputs)!r}; wrap it in [] (e.g. [{str(inputs)!r}])."
        )
    scan = InputScan()
    seen: set[str] = set()
    for raw in inputs:
        part = _scan_one(os.fspath(raw))
        for path in part.images:
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                scan.images.append(path)
        for path, reason in part.skipped:
            key = os.path.abspath(path)
            if key not in seen:
                seen.add(key)
                scan.skipped.append((path, reason))
        scan.ignored.extend(part.ignored)
    return scan


def iter_image_paths(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files, folders and glob patterns into a list of image files (see [`scan_inputs`] for the rules).

    Args:
        inputs (`Iterable[str | os.PathLike]`):
            Paths and patterns, for example ``["photo.jpg", "data/val", "shots/**/*.png"]``.

    Returns:
        `list[pathlib.Path]`: the image files, inputs in the order given and each folder or pattern's matches
        sorted by POSIX path; a file reached twice is listed once (at its first position).

    Raises:
        TypeError: `inputs` is a single string or path instead of a list of them.
        FileNotFoundError: an input names a missing path, a folder without images, or a pattern matching no image;
            the message names that input.
    """
    if isinstance(inputs, str | os.PathLike):
        raise TypeError(
            f"iter_image_paths expects a list of paths, got the single path {str(inputs)!r}; wrap it in []."
        )
    found: list[Path] = []
    seen: set[str] = set()
    for raw in inputs:
        text = os.fspath(raw)
        matches = _scan_one(text).images
        if not matches:
            raise FileNotFoundError(_nothing_found_message(text))
        for path in matches:
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                found.append(path)
    return found


def _link_problem(path: Path) -> str | None:
    """Why a symbolic link cannot be followed (a loop, a missing target), or None when it can."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (the link leads back to itself); point it at an image file or remove it"
        if isinstance(exc, FileNotFoundError):
            return f"broken symbolic link: its target {os.readlink(path)!r} does not exist"
        return f"cannot follow the symbolic link ({exc.strerror or exc})"
    return None


def _scan_one(text: str) -> InputScan:
    path = Path(text)
    if path.is_symlink() and (problem := _link_problem(path)) is not None:
        return InputScan(skipped=[(path, problem)])
    if path.is_file():
        return InputScan(images=[path])
    if path.is_dir():
        return _scan_entries(path, path.rglob("*"), base=path)
    if _GLOB_CHARS.intersection(text):
        return _scan_entries(None, (Path(m) for m in glob.glob(text, recursive=True)), base=None)
    return InputScan()


def _scan_entries(folder: Path | None, entries: Iterable[Path], base: Path | None) -> InputScan:
    """Classify folder contents (``base`` given: hidden parts below it are passed over) or glob matches."""
    scan = InputScan()
    image_folders: list[Path] = []
    for candidate in entries:
        if base is not None and any(part.startswith(".") for part in candidate.relative_to(base).parts):
            continue
        suffix = candidate.suffix.lower()
        if candidate.is_symlink():
            problem = _link_problem(candidate)
            if problem is not None:
                scan.skipped.append((candidate, problem))
                continue
            if candidate.is_dir():
                if base is None:  # a pattern that names a linked folder: searched, as a named folder is
                    sub = _scan_entries(candidate, candidate.rglob("*"), base=candidate)
                    _merge(scan, sub)
                else:
                    scan.ignored.append(candidate)  # not followed: no endless search through a link cycle
                continue
        if candidate.is_dir():
            if base is None:
                _merge(scan, _scan_entries(candidate, candidate.rglob("*"), base=candidate))
            if suffix in IMAGE_EXTENSIONS or suffix in UNSUPPORTED_IMAGE_EXTENSIONS:
                image_folders.append(candidate)
        elif candidate.is_file():
            if suffix in IMAGE_EXTENSIONS:
                scan.images.append(candidate)
            elif suffix in UNSUPPORTED_IMAGE_EXTENSIONS:
                scan.skipped.append(
                    (
                        candidate,
                        f"unsupported image type {suffix} (folders are searched for "
                        f"{', '.join(sorted(IMAGE_EXTENSIONS))}); convert it to PNG or JPEG, or name the file "
                        "explicitly to try it",
                    )
                )
            else:
                scan.ignored.append(candidate)
        else:
            scan.ignored.append(candidate)  # a socket, a device...
    for image_folder in image_folders:
        if not any(image_folder in image.parents for image in scan.images):
            scan.skipped.append(
                (image_folder, "a folder named like an image file, not an image; it holds no image to segment")
            )
    scan.images.sort(key=lambda p: p.as_posix())
    scan.skipped.sort(key=lambda item: item[0].as_posix())
    return scan


def _merge(into: InputScan, part: InputScan) -> None:
    into.images.extend(part.images)
    into.skipped.extend(part.skipped)
    into.ignored.extend(part.ignored)


def _nothing_found_message(text: str) -> str:
    path = Path(text)
    extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
    if path.is_dir():
        return f"No image files ({extensions}) found under folder {text!r}."
    if _GLOB_CHARS.intersection(text):
        return f"Pattern {text!r} matched no image files ({extensions})."
    if path.is_symlink():
        return f"Input {text!r} is a {_link_problem(path) or 'symbolic link to nothing usable'}."
    return f"Input {text!r} does not exist (not a file, folder or glob pattern)."
