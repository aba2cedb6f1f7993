"""CIFAR-10-C: the 19 common corruptions of Hendrycks & Dietterich (ICLR 2019), regenerated locally.

The PART paper (ICML 2024, Table 4) reports accuracy on CIFAR-10-C. When the official files (Zenodo record 2535967,
the folder ``CIFAR-10-C/`` that RobustBench reads) are at hand they are used as they are; otherwise
:func:`generate_cifar10c` writes the same corruptions of the CIFAR-10 test set, in RobustBench's on-disk layout.

Source of the corruptions and of every per-severity parameter tuple: ``ImageNet-C/create_c/make_cifar_c.py`` of
https://github.com/hendrycks/robustness (commit ca360085d57889288c4143fddd8a707bbcae01bd), the CIFAR-specific
script; its parameters differ from those of ``make_imagenet_c.py``. The tables below are copied from it verbatim.
Like the official script, every corruption works on the image scaled to [0, 1] and its float result is stored as
``np.uint8(result * 255)``, i.e. truncated, not rounded.

Known differences from the official files (a regenerated CIFAR-10-C is the same *distribution* of corruptions, never
the same pixels: the official random draws are not reproducible):

* Random numbers: numpy ``Generator`` streams seeded from ``(seed, corruption index, severity, draw number)``
  instead of numpy's global state; every draw has the image as its leading axis, so an image's corruption does not
  depend on how many images follow it (``corrupt(x[:k]) == corrupt(x)[:k]``).
* skimage is not used (imagecorruptions installs it, but nothing here imports it, nor needs its version):
  ``skimage.filters.gaussian`` is ``scipy.ndimage.gaussian_filter`` with skimage's defaults (``mode="nearest"``,
  ``truncate=4``; ``mode="reflect"``, ``truncate=3`` in elastic_transform, as the official call), over rows and
  columns only (``sigma=(0, s, s, 0)``); ``skimage.color.rgb2hsv``/``hsv2rgb``
  (brightness, saturate) are re-implemented in numpy with skimage's formulas; ``skimage.util.random_noise``'s
  salt & pepper (impulse_noise) is re-implemented with its semantics (each channel value is replaced with
  probability ``amount``, by 1 or 0 with equal odds).
* Wand/ImageMagick is not installed: ``MagickMotionBlurImage(radius, sigma, angle)`` (motion_blur, snow) is
  re-implemented from ImageMagick's ``MotionBlurImage``: a one-sided line kernel of ``2 * ceil(radius) + 1`` taps
  with half-Gaussian weights ``exp(-i^2 / (2 sigma^2))``, tap ``i`` at the pixel offset
  ``(ceil(i cos(angle) - 0.5), ceil(i sin(angle) - 0.5))``, edge pixels repeated outside the image (ImageMagick's
  default virtual-pixel method), the result truncated to 8 bits (the floor of the blur: the official files equal it
  on 98.4-99.8 % of values, rounding to nearest would be one level too high on about half of them). This is a
  ``cv2.filter2D`` with that line kernel and ``BORDER_REPLICATE``, computed as a sum of shifted copies so that
  every image of the batch gets its own random angle.
* frost blends a crop of one of the official frost photographs (``frost1.png`` ... ``frost5.jpg``, the official
  ``randint(5)``; :func:`frost_photographs`) with the official weights, read from the files that the
  ``imagecorruptions`` package ships (byte-for-byte those of hendrycks/robustness, checked by sha256) and prepared
  as the official script does (``cv2.imread``, ``cv2.resize`` by 0.2, BGR -> RGB). Only the random draws differ:
  photograph, then row and column offsets of each image's 32x32 crop, from our streams.
* glass_blur: the official per-pixel loop ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` does not swap: both sides
  are numpy views, so it copies ``x[h', w']`` into ``x[h, w]`` and leaves ``x[h', w']`` as it is; and
  ``np.random.randint(-1, 1)`` draws offsets in {-1, 0} only. We reproduce that actual behaviour. Since the loop
  runs over decreasing rows and columns and only reads pixels above or to the left, every read sees an unmodified
  pixel, so one pass is exactly one vectorised gather ``x[h, w] <- x[h + dy, w + dx]`` for 2 <= h, w <= 31.
* zoom_blur and snow's ``clipped_zoom``: ``scipy.ndimage.zoom(order=1)`` is computed as the same linear
  interpolation (same output size and sampling grid), separably and for the whole batch at once.
* elastic_transform: ``cv2.getAffineTransform`` + ``cv2.warpAffine`` (bilinear, ``BORDER_REFLECT_101``) and
  ``scipy.ndimage.map_coordinates(order=1, mode="reflect")`` are batched numpy bilinear interpolations with the
  same border rules (tests: equal to the OpenCV/scipy path up to one level where a value sits on a truncation
  tie).
* defocus_blur: the official disk kernel (``disk()``, built with cv2 exactly as the official one) is cropped to its
  non-zero taps and applied as a correlation with ``BORDER_REFLECT_101``, the default border of ``cv2.filter2D``.
* pixelate: the same ``PIL`` BOX resizes, run on the batch stacked into one tall image one axis at a time, which is
  exactly what PIL does per image (separable, horizontal pass first).
* spatter: a liquid layer above 1 is clipped to 255 before the uint8 cast (the official cast wraps such values
  around, which numpy leaves undefined); where no liquid is left after the threshold (severities 1-3) the image
  is left unchanged (the official division by a zero maximum would produce NaN).

Everything else (noise models, blur kernels, plasma fractal, blending weights, JPEG through PIL, the float dtypes
of each official function and the final truncation) follows the official script; the tests check several
corruptions against colorsys, PIL, OpenCV, scipy and the official glass_blur loop. No computation mixes images
(no matrix products over the batch), so results do not depend on the batch size; ``GENERATED.json`` records
:data:`GENERATOR_VERSION`.
"""

import functools
import hashlib
import importlib.resources
import importlib.util
import io
import json
import os

import cv2
import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from art_part.checkpoint import atomic_write, atomic_write_text

#: The 19 corruptions in the order of the PART paper's Table 4, with RobustBench's (and the official files') names.
CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "gaussian_blur", "snow", "frost", "fog", "brightness", "spatter", "contrast", "elastic_transform",
    "pixelate", "jpeg_compression", "saturate",
)
SEVERITIES = (1, 2, 3, 4, 5)

#: Version of this generator, recorded in GENERATED.json; bump it whenever any output could change.
GENERATOR_VERSION = 2
#: RobustBench's folder name of CIFAR-10-C, and the number of images per severity in the official files.
CIFAR10C_FOLDER = "CIFAR-10-C"
CIFAR10C_TEST_SIZE = 10000
MANIFEST = "GENERATED.json"
SOURCE = ("https://github.com/hendrycks/robustness/blob/ca360085d57889288c4143fddd8a707bbcae01bd/"
          "ImageNet-C/create_c/make_cifar_c.py")
OFFICIAL_URL = "https://zenodo.org/record/2535967"

SIZE = 32


# --- helpers ------------------------------------------------------------------------------------------------------


def _streams(seed, corruption, severity):
    """An endless supply of independent numpy Generators, one per random draw of a corruption."""
    base = [int(seed), CORRUPTIONS.index(corruption), int(severity)]
    draw = 0
    while True:
        yield np.random.default_rng(base + [draw])
        draw += 1


def _gaussian(x, sigma, mode="nearest", truncate=4.0):
    """skimage.filters.gaussian over the rows and columns of a batch (N, H, W[, C])."""
    sigmas = (0, sigma, sigma) + (0,) * (x.ndim - 3)
    return gaussian_filter(x, sigma=sigmas, mode=mode, truncate=truncate)


def _rgb2hsv(r, g, b):
    """skimage.color.rgb2hsv on three planes of floats in [0, 1]: (h, s, v), with skimage's arithmetic."""
    v = np.maximum(np.maximum(r, g), b)
    delta = v - np.minimum(np.minimum(r, g), b)
    flat = delta == 0
    s = np.where(flat, 0.0, delta / np.where(v == 0, 1.0, v))
    # skimage assigns the hue of a red, then green, then blue maximum: where several channels are the maximum,
    # the last one wins
    is_b = b == v
    is_g = (g == v) & ~is_b
    numerator = np.where(is_b, r - g, np.where(is_g, b - r, g - b))
    offset = np.where(is_b, 4.0, np.where(is_g, 2.0, 0.0))
    h = ((offset + numerator / np.where(flat, 1.0, delta)) / 6.0) % 1.0
    h[flat] = 0.0
    return h, s, v


#: For each of r, g, b: which of (v, p, q, t) it is in each of the six hue sectors (skimage's ``np.choose`` table).
_HSV_SECTORS = np.array([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]])


def _hsv2rgb(h, s, v):
    """skimage.color.hsv2rgb on three planes: (r, g, b), with skimage's (and colorsys's) sector formulas."""
    hi = np.floor(h * 6)
    f = h * 6 - hi
    candidates = np.stack([v, v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)]).reshape(4, -1)  # v, p, q, t
    sector = hi.astype(np.int64).ravel() % 6
    flat_index = np.arange(sector.size)
    return [candidates.ravel()[_HSV_SECTORS[k][sector] * sector.size + flat_index].reshape(h.shape)
            for k in range(3)]


def _adjust_hsv(x, adjust, chunk=256):
    """uint8 RGB batch -> rgb2hsv -> ``adjust(h, s, v) -> (h, s, v)`` -> hsv2rgb, floats in [0, 1]; in chunks of
    images small enough for the cache (4-6 times faster than the whole batch at once)."""
    out = np.empty(x.shape, dtype=np.float64)
    for start in range(0, len(x), chunk):
        planes = [x[start:start + chunk, ..., k] / 255. for k in range(3)]
        for k, plane in enumerate(_hsv2rgb(*adjust(*_rgb2hsv(*planes)))):
            out[start:start + chunk, ..., k] = plane
    return out


def _zoom_taps(size, zoom_factor):
    """``clipped_zoom`` along one axis of length ``size``: for each output pixel, the two input pixels and the
    weight of the second, as ``scipy.ndimage.zoom(order=1)`` (grid_mode=False) interpolates the centre crop of
    ``ceil(size / z)`` pixels up to ``round(ceil(size / z) * z)``, trimmed back to ``size``."""
    ch = int(np.ceil(size / zoom_factor))
    top = (size - ch) // 2
    zoomed = int(round(ch * zoom_factor))
    step = (ch - 1) / (zoomed - 1) if zoomed > 1 else 1.0
    position = np.arange(zoomed) * step
    low = np.minimum(np.floor(position).astype(np.int64), ch - 1)
    frac = position - low
    high = np.minimum(low + 1, ch - 1)
    trim = (zoomed - size) // 2
    keep = slice(trim, trim + size)
    return top + low[keep], top + high[keep], frac[keep]


def _clipped_zoom(planes, zoom_factor):
    """The official ``clipped_zoom`` (zoom into the centre by ``zoom_factor``) of every image of a batch laid out
    as (H, H, ...): images along the trailing axes, so each step moves long contiguous runs.

    Element-wise interpolation in float64 as scipy's (no BLAS), so an image's result does not depend on the rest of
    the batch; the result has the input's dtype."""
    low, high, frac = _zoom_taps(planes.shape[0], zoom_factor)
    w = frac.reshape((-1,) + (1,) * (planes.ndim - 1))
    rows = planes[low] * (1 - w) + planes[high] * w
    w = frac.reshape((1, -1) + (1,) * (planes.ndim - 2))
    return (rows[:, low] * (1 - w) + rows[:, high] * w).astype(planes.dtype, copy=False)


def _reflect101(index, n):
    """OpenCV's BORDER_REFLECT_101 (gfedcb|abcdefgh|gfedcba)."""
    period = 2 * n - 2
    index = np.mod(index, period)
    return np.where(index >= n, period - index, index)


def _reflect(index, n):
    """scipy.ndimage's mode="reflect" (half-sample symmetric: abcd|dcba)."""
    index = np.mod(index, 2 * n)
    return np.where(index >= n, 2 * n - 1 - index, index)


def _bilinear(images, rows, cols, border):
    """Sample a batch (N, H, W, C) at float (N, H', W') ``rows``, ``cols`` by bilinear interpolation."""
    n, h, w = images.shape[:3]
    r0 = np.floor(rows)
    c0 = np.floor(cols)
    fr = (rows - r0)[..., None]
    fc = (cols - c0)[..., None]
    r0 = r0.astype(np.int64)
    c0 = c0.astype(np.int64)
    ra, rb = border(r0, h), border(r0 + 1, h)
    ca, cb = border(c0, w), border(c0 + 1, w)
    batch = np.arange(n)[:, None, None]
    return ((1 - fr) * ((1 - fc) * images[batch, ra, ca] + fc * images[batch, ra, cb])
            + fr * ((1 - fc) * images[batch, rb, ca] + fc * images[batch, rb, cb]))


def _motion_blur(images, radius, sigma, angles):
    """ImageMagick's ``MotionBlurImage(radius, sigma, angle)`` on a uint8 batch (N, H, W, C), one angle (degrees)
    per image; returns the 8-bit result (as floats): the floor of the blur, as the official files have it."""
    n, h, w = images.shape[:3]
    width = 2 * int(np.ceil(radius)) + 1
    taps = np.arange(width)
    kernel = np.exp(-(taps.astype(np.float64) ** 2) / (2.0 * sigma * sigma)) / (np.sqrt(2 * np.pi) * sigma)
    kernel /= kernel.sum()
    radians = np.deg2rad(np.asarray(angles, dtype=np.float64))
    point_x = width * np.sin(radians)
    point_y = width * np.cos(radians)
    hypot = np.hypot(point_x, point_y)
    offset_x = np.ceil(taps[None, :] * point_y[:, None] / hypot[:, None] - 0.5).astype(np.int64)  # (N, width)
    offset_y = np.ceil(taps[None, :] * point_x[:, None] / hypot[:, None] - 0.5).astype(np.int64)
    batch = np.arange(n)[:, None, None]
    out = np.zeros(images.shape, dtype=np.float64)
    for i in range(width):
        rows = np.clip(np.arange(h)[None, :] + offset_y[:, i, None], 0, h - 1)
        cols = np.clip(np.arange(w)[None, :] + offset_x[:, i, None], 0, w - 1)
        out += kernel[i] * images[batch, rows[:, :, None], cols[:, None, :]]
    # Back to 8 bits by truncation, not rounding: the official files equal the floor of the unrounded blur on
    # 98.4-99.8 % of values, where rounding to nearest is one level too high on about half of them. The exact blur
    # of a constant stretch is that constant (the weights sum to 1), but the float sum lands within ~1e-12 of it
    # on either side (at most 29 taps of values <= 255, weights normalised in float64), and a bare floor would
    # then take an unchanged pixel one level down at random. So anything within 1e-9 below an integer counts as
    # that integer: 1e-9 is a thousand times that float noise, and a true blur value falls in that sliver about
    # once in 10^9 values (1.5e8 values in a whole motion_blur file).
    return np.floor(np.clip(out, 0, 255) + 1e-9)


def _disk(radius, alias_blur=0.1, dtype=np.float32):
    """The official ``disk`` kernel of defocus_blur, cropped to its non-zero taps (centred, odd size)."""
    if radius <= 8:
        coords = np.arange(-8, 8 + 1)
        ksize = (3, 3)
    else:
        coords = np.arange(-radius, radius + 1)
        ksize = (5, 5)
    xx, yy = np.meshgrid(coords, coords)
    aliased_disk = np.array((xx ** 2 + yy ** 2) <= radius ** 2, dtype=dtype)
    aliased_disk /= np.sum(aliased_disk)
    kernel = cv2.GaussianBlur(aliased_disk, ksize=ksize, sigmaX=alias_blur)
    centre = len(coords) // 2
    reach = int(np.abs(np.argwhere(kernel != 0) - centre).max())
    return kernel[centre - reach:centre + reach + 1, centre - reach:centre + reach + 1]


def _plasma_fractal(n, rngs, mapsize=SIZE, wibbledecay=3):
    """The official diamond-square ``plasma_fractal`` for ``n`` images at once: (n, mapsize, mapsize) in [0, 1]."""
    maparray = np.empty((n, mapsize, mapsize), dtype=np.float64)
    maparray[:, 0, 0] = 0
    stepsize = mapsize
    wibble = 100.0

    def wibbledmean(array):
        return array / 4 + wibble * next(rngs).uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        half = stepsize // 2
        # fill squares
        cornerref = maparray[:, 0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=1)
        squareaccum += np.roll(squareaccum, shift=-1, axis=2)
        maparray[:, half:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(squareaccum)
        # fill diamonds
        drgrid = maparray[:, half:mapsize:stepsize, half:mapsize:stepsize]
        ulgrid = maparray[:, 0:mapsize:stepsize, 0:mapsize:stepsize]
        ltsum = drgrid + np.roll(drgrid, 1, axis=1) + ulgrid + np.roll(ulgrid, -1, axis=2)
        maparray[:, 0:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(ltsum)
        ttsum = drgrid + np.roll(drgrid, 1, axis=2) + ulgrid + np.roll(ulgrid, -1, axis=1)
        maparray[:, half:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(ttsum)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min(axis=(1, 2), keepdims=True)
    return maparray / maparray.max(axis=(1, 2), keepdims=True)


#: The official frost photographs, in make_cifar_c.py's ``filename`` order, with the sha256 of each file. They ship
#: in the imagecorruptions wheel (PyPI, Apache-2.0, ``imagecorruptions/frost/``), byte-for-byte the files of
#: hendrycks/robustness; a file with another hash is refused rather than silently giving another frost.
FROST_PHOTOGRAPHS = (
    ("frost1.png", "ff9f907860bd7a835d459e32f9d588062b7f61ee267343cc7222b56753a14755"),
    ("frost2.png", "fe211a89b336999c207a852ce05818d4545d0b57c5beadd824b4cc9d9a9b6137"),
    ("frost3.png", "2d0d50b4a9bb213f38b024ef7768731bb83cc08d2f26b5766bbc167cdfa0e504"),
    ("frost4.jpg", "3f8b91ca1a9fa7167b09e773da53f5ae60d0a1fd88f02a783f6e328a72887f6e"),
    ("frost5.jpg", "5fc6a19df4a429ba68abdcc8f8a4278d4c9f81c9ccafd2c92ab0c8cf8992ebd2"),
    ("frost6.jpg", "1f92b2f48408748085b68dd81d816ef239f42cef3029c25d041fcb6760fb4f25"),
)
#: The official CIFAR script draws ``np.random.randint(5)``: frost6.jpg is listed but never used.
FROST_CHOICES = 5
#: The official ``cv2.resize(frost, (0, 0), fx=0.2, fy=0.2)`` (default interpolation: bilinear).
FROST_SCALE = 0.2
FROST_PACKAGE = "imagecorruptions"


def _frost_folder():
    """The ``frost/`` folder of the installed imagecorruptions package (an importlib.resources Traversable).

    The package is located, not imported: its ``__init__`` imports skimage, ``pkg_resources`` and scipy's deprecated
    ``ndimage.interpolation`` for corruption functions we do not use (they have ImageNet-C parameters); only its
    data files are needed. Nothing is ever downloaded."""
    spec = importlib.util.find_spec(FROST_PACKAGE)
    if spec is None or spec.submodule_search_locations is None:
        raise ModuleNotFoundError(
            f"frost blends the official frost photographs, which ship in the {FROST_PACKAGE} package; it is not "
            f"installed: pip install {FROST_PACKAGE}==1.1.2 (a dependency of this project)")
    return importlib.resources.files(importlib.util.module_from_spec(spec)) / "frost"


def _load_frost_photographs(folder):
    """Read, check and shrink the six photographs of ``folder``: uint8 RGB arrays, as the official frost prepares
    them before its crop (``cv2.imread``, ``cv2.resize`` by a fifth, then BGR -> RGB; doing the channel swap before
    the crop instead of after changes nothing).

    The decoded bytes are the hashed bytes: ``cv2.imdecode`` with ``IMREAD_COLOR`` is ``cv2.imread``'s decoder and
    flags (colour, alpha dropped, 8 bits)."""
    photographs = []
    for name, sha256 in FROST_PHOTOGRAPHS:
        entry = folder / name
        if not entry.is_file():
            raise FileNotFoundError(f"frost photograph {name} is missing from {folder} (expected the six files "
                                    f"{', '.join(n for n, _ in FROST_PHOTOGRAPHS)}): reinstall {FROST_PACKAGE}")
        data = entry.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise ValueError(f"frost photograph {name} in {folder} has sha256 {digest}, not the official {sha256}: "
                             f"not the hendrycks/robustness file; reinstall {FROST_PACKAGE}==1.1.2")
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        if image is None or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"frost photograph {name} in {folder} cannot be decoded as a colour image")
        image = np.ascontiguousarray(cv2.resize(image, (0, 0), fx=FROST_SCALE, fy=FROST_SCALE)[..., ::-1])
        image.setflags(write=False)
        photographs.append(image)
    return tuple(photographs)


@functools.lru_cache(maxsize=1)
def frost_photographs():
    """The six official frost photographs (frost1.png ... frost6.jpg), shrunk as the official frost shrinks them:
    read-only uint8 RGB arrays of 120x180, 63x112, 63x112, 70x105, 99x132 and 65x97 pixels. Loaded and checked once.

    frost2.png and frost3.png differ only in their metadata (same pixels), so the official ``randint(5)`` blends
    frost2's pixels two times in five."""
    return _load_frost_photographs(_frost_folder())


@functools.lru_cache(maxsize=1)
def _frost_stack():
    """The photographs frost can pick, zero-padded into one array (so that a batch is cropped by one gather), with
    the height and width of each: (stack (5, H, W, 3), heights (5,), widths (5,)). Padding is never read."""
    photographs = frost_photographs()[:FROST_CHOICES]
    heights = np.array([p.shape[0] for p in photographs])
    widths = np.array([p.shape[1] for p in photographs])
    stack = np.zeros((len(photographs), heights.max(), widths.max(), 3), dtype=np.uint8)
    for k, photograph in enumerate(photographs):
        stack[k, :photograph.shape[0], :photograph.shape[1]] = photograph
    stack.setflags(write=False)
    return stack, heights, widths


# --- the corruptions: f(uint8 (N, 32, 32, 3), severity, rngs) -> values in [0, 255] ---------------------------------


def gaussian_noise(x, severity, rngs):
    c = [0.04, 0.06, .08, .09, .10][severity - 1]
    x = x / 255.
    return np.clip(x + next(rngs).normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(x, severity, rngs):
    c = [500, 250, 100, 75, 50][severity - 1]
    x = x / 255.
    return np.clip(next(rngs).poisson(x * c) / c, 0, 1) * 255


def impulse_noise(x, severity, rngs):
    c = [.01, .02, .03, .05, .07][severity - 1]
    x = x / 255.
    flipped = next(rngs).random(x.shape) < c
    salted = next(rngs).random(x.shape) < 0.5
    x[flipped & salted] = 1
    x[flipped & ~salted] = 0
    return np.clip(x, 0, 1) * 255


def speckle_noise(x, severity, rngs):
    c = [.06, .1, .12, .16, .2][severity - 1]
    x = x / 255.
    return np.clip(x + x * next(rngs).normal(size=x.shape, scale=c), 0, 1) * 255


def gaussian_blur(x, severity, rngs):
    c = [.4, .6, 0.7, .8, 1][severity - 1]
    return np.clip(_gaussian(x / 255., c), 0, 1) * 255


def glass_blur(x, severity, rngs):
    # sigma, max_delta, iterations
    c = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][severity - 1]
    x = np.uint8(_gaussian(x / 255., c[0]) * 255)
    # The official loop visits h, w = 31, 30, ..., 2 (rows outer), draws (dx, dy) = randint(-1, 1, size=2) and
    # copies x[h + dy, w + dx] into x[h, w] (see the module docstring).
    n, lo, hi = len(x), c[1] + 1, SIZE - c[1]
    positions = np.arange(hi, c[1], -1)  # 31 .. 2, the official visiting order
    batch = np.arange(n)[:, None, None]
    for _ in range(c[2]):
        offsets = next(rngs).integers(-c[1], c[1], size=(n, len(positions), len(positions), 2))
        dx, dy = offsets[..., 0], offsets[..., 1]
        source_rows = positions[None, :, None] + dy
        source_cols = positions[None, None, :] + dx
        moved = x[batch, source_rows, source_cols]  # a copy: every read sees the pass's input
        x[:, hi:lo - 1:-1, hi:lo - 1:-1] = moved
    return np.clip(_gaussian(x / 255., c[0]), 0, 1) * 255


def defocus_blur(x, severity, rngs):
    c = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][severity - 1]
    x = x / 255.
    kernel = _disk(radius=c[0], alias_blur=c[1]).astype(np.float64)
    reach = kernel.shape[0] // 2
    padded = np.pad(x, ((0, 0), (reach, reach), (reach, reach), (0, 0)), mode="reflect")  # = BORDER_REFLECT_101
    out = np.zeros_like(x)
    for i in range(kernel.shape[0]):
        for j in range(kernel.shape[1]):
            if kernel[i, j] != 0:
                out += kernel[i, j] * padded[:, i:i + SIZE, j:j + SIZE]
    return np.clip(out, 0, 1) * 255


def motion_blur(x, severity, rngs):
    c = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)][severity - 1]
    angles = next(rngs).uniform(-45, 45, size=len(x))
    return _motion_blur(x, radius=c[0], sigma=c[1], angles=angles)


def zoom_blur(x, severity, rngs):
    c = [np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
         np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01)][severity - 1]
    x = np.ascontiguousarray((x / 255.).astype(np.float32).transpose(1, 2, 0, 3))  # (H, W, N, C): _clipped_zoom
    out = np.zeros_like(x)
    for zoom_factor in c:
        out += _clipped_zoom(x, zoom_factor)
    x = (x + out) / (len(c) + 1)
    return (np.clip(x, 0, 1) * 255).transpose(2, 0, 1, 3)


def snow(x, severity, rngs):
    c = [(0.1, 0.2, 1, 0.6, 8, 3, 0.95),
         (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
         (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
         (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
         (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)][severity - 1]
    n = len(x)
    x = np.asarray(x, dtype=np.float32) / 255.
    snow_layer = next(rngs).normal(size=(n, SIZE, SIZE), loc=c[0], scale=c[1])
    snow_layer = _clipped_zoom(np.ascontiguousarray(snow_layer.transpose(1, 2, 0)), c[2]).transpose(2, 0, 1)[..., np.newaxis]
    snow_layer[snow_layer < c[3]] = 0
    snow_layer = (np.clip(snow_layer, 0, 1) * 255).astype(np.uint8)  # the official PNG of mode L
    angles = next(rngs).uniform(-135, -45, size=n)
    snow_layer = (_motion_blur(snow_layer, radius=c[4], sigma=c[5], angles=angles) / 255.).astype(np.float32)
    grey = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]  # cv2.COLOR_RGB2GRAY
    x = c[6] * x + (1 - c[6]) * np.maximum(x, grey[..., np.newaxis] * 1.5 + 0.5)
    return np.clip(x + snow_layer + np.rot90(snow_layer, k=2, axes=(1, 2)), 0, 1) * 255


def frost(x, severity, rngs):
    c = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)][severity - 1]
    n = len(x)
    stack, heights, widths = _frost_stack()
    idx = next(rngs).integers(FROST_CHOICES, size=n)
    # the official randint(0, shape - 32) on rows, then columns, of the chosen photograph
    x_start = next(rngs).integers(0, heights[idx] - SIZE)
    y_start = next(rngs).integers(0, widths[idx] - SIZE)
    offsets = np.arange(SIZE)
    crops = stack[idx[:, None, None], x_start[:, None, None] + offsets[None, :, None],
                  y_start[:, None, None] + offsets[None, None, :]]
    return np.clip(c[0] * np.asarray(x, dtype=np.float64) + c[1] * crops, 0, 255)


def fog(x, severity, rngs):
    c = [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][severity - 1]
    x = x / 255.
    max_val = x.max(axis=(1, 2, 3), keepdims=True)
    x += c[0] * _plasma_fractal(len(x), rngs, wibbledecay=c[1])[:, :SIZE, :SIZE][..., np.newaxis]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255


def brightness(x, severity, rngs):
    c = [.05, .1, .15, .2, .3][severity - 1]
    x = _adjust_hsv(x, lambda h, s, v: (h, s, np.clip(v + c, 0, 1)))
    return np.clip(x, 0, 1) * 255


def spatter(x, severity, rngs):
    c = [(0.62, 0.1, 0.7, 0.7, 0.5, 0),
         (0.65, 0.1, 0.8, 0.7, 0.5, 0),
         (0.65, 0.3, 1, 0.69, 0.5, 0),
         (0.65, 0.1, 0.7, 0.69, 0.6, 1),
         (0.65, 0.1, 0.5, 0.68, 0.6, 1)][severity - 1]
    n = len(x)
    x = np.asarray(x, dtype=np.float32) / 255.
    liquid_layer = next(rngs).normal(size=(n, SIZE, SIZE), loc=c[0], scale=c[1])
    liquid_layer = _gaussian(liquid_layer, c[2])
    liquid_layer[liquid_layer < c[3]] = 0
    if c[5] == 0:
        liquid_layer = np.clip(liquid_layer * 255, 0, 255).astype(np.uint8)
        ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float32)
        dist = np.empty((n, SIZE, SIZE), dtype=np.float32)
        for i in range(n):  # edges and distance transforms: OpenCV works on one image at a time
            d = 255 - cv2.Canny(liquid_layer[i], 50, 150)
            d = cv2.distanceTransform(d, cv2.DIST_L2, 5)
            _, d = cv2.threshold(d, 20, 20, cv2.THRESH_TRUNC)
            d = cv2.blur(d, (3, 3)).astype(np.uint8)
            d = cv2.equalizeHist(d)
            d = cv2.filter2D(d, cv2.CV_8U, ker)
            dist[i] = cv2.blur(d, (3, 3)).astype(np.float32)
        m = liquid_layer * dist
        peak = m.max(axis=(1, 2), keepdims=True)
        m = np.divide(m, peak, out=np.zeros_like(m), where=peak > 0) * c[4]
        # water is pale turquoise
        color = np.array([175, 238, 238], dtype=np.float32) / 255.
        return np.clip(x + m[..., np.newaxis] * color, 0, 1) * 255
    m = np.where(liquid_layer > c[3], 1, 0).astype(np.float32)
    m = _gaussian(m, c[4])
    m[m < 0.8] = 0
    # mud brown
    color = np.array([63, 42, 20], dtype=np.float32) / 255. * m[..., np.newaxis]
    x *= (1 - m[..., np.newaxis])
    return np.clip(x + color, 0, 1) * 255


def contrast(x, severity, rngs):
    c = [.75, .5, .4, .3, 0.15][severity - 1]
    x = x / 255.
    means = np.mean(x, axis=(1, 2), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def elastic_transform(x, severity, rngs):
    IMSIZE = SIZE
    c = [(IMSIZE * 0, IMSIZE * 0, IMSIZE * 0.08),
         (IMSIZE * 0.05, IMSIZE * 0.2, IMSIZE * 0.07),
         (IMSIZE * 0.08, IMSIZE * 0.06, IMSIZE * 0.06),
         (IMSIZE * 0.1, IMSIZE * 0.04, IMSIZE * 0.05),
         (IMSIZE * 0.1, IMSIZE * 0.03, IMSIZE * 0.03)][severity - 1]
    n = len(x)
    image = np.asarray(x, dtype=np.float32) / 255.
    shape_size = image.shape[1:3]

    # random affine: the official three points (x, y) and their random moves
    center_square = np.float32(shape_size) // 2
    square_size = min(shape_size) // 3
    pts1 = np.float32([center_square + square_size,
                       [center_square[0] + square_size, center_square[1] - square_size],
                       center_square - square_size])
    pts2 = pts1 + next(rngs).uniform(-c[2], c[2], size=(n,) + pts1.shape).astype(np.float32)
    # cv2.getAffineTransform(pts1, pts2): M (2x3) with M @ [p, 1] = p', then cv2.warpAffine samples the source at
    # M^-1 (destination pixel)
    source = np.concatenate([pts1, np.ones((3, 1), np.float32)], axis=1).astype(np.float64)
    forward = np.linalg.solve(source[None], pts2.astype(np.float64)).transpose(0, 2, 1)  # (n, 2, 3)
    linear_inverse = np.linalg.inv(forward[:, :, :2])
    shift_inverse = -np.einsum("nij,nj->ni", linear_inverse, forward[:, :, 2])
    cols, rows = np.meshgrid(np.arange(shape_size[1], dtype=np.float64), np.arange(shape_size[0], dtype=np.float64))
    src_cols = (linear_inverse[:, 0, 0, None, None] * cols + linear_inverse[:, 0, 1, None, None] * rows
                + shift_inverse[:, 0, None, None])
    src_rows = (linear_inverse[:, 1, 0, None, None] * cols + linear_inverse[:, 1, 1, None, None] * rows
                + shift_inverse[:, 1, None, None])
    image = _bilinear(image, src_rows, src_cols, _reflect101).astype(np.float32)

    dx = (_gaussian(next(rngs).uniform(-1, 1, size=(n,) + shape_size), c[1], mode="reflect", truncate=3)
          * c[0]).astype(np.float32)
    dy = (_gaussian(next(rngs).uniform(-1, 1, size=(n,) + shape_size), c[1], mode="reflect", truncate=3)
          * c[0]).astype(np.float32)
    # the official map_coordinates(image, (y + dy, x + dx, z), order=1, mode="reflect")
    out = _bilinear(image, rows + dy, cols + dx, _reflect)
    return np.clip(out, 0, 1) * 255


def _pil_resize_rows(x, width):
    """PIL BOX resize of every image of a uint8 batch (N, H, W, 3) to ``width`` columns, rows untouched (exactly
    PIL's horizontal pass, run on all images stacked into one tall image)."""
    n, h = x.shape[:2]
    tall = Image.fromarray(np.ascontiguousarray(x.reshape(n * h, x.shape[2], 3)))
    return np.asarray(tall.resize((width, n * h), Image.BOX)).reshape(n, h, width, 3)


def _pil_resize(x, size):
    """PIL ``resize((size, size), Image.BOX)`` of every image of a uint8 batch: columns first, then rows, as PIL."""
    x = _pil_resize_rows(x, size)
    return _pil_resize_rows(x.transpose(0, 2, 1, 3), size).transpose(0, 2, 1, 3)


def pixelate(x, severity, rngs):
    c = [0.95, 0.9, 0.85, 0.75, 0.65][severity - 1]
    return _pil_resize(_pil_resize(x, int(SIZE * c)), SIZE)


def jpeg_compression(x, severity, rngs):
    c = [80, 65, 58, 50, 40][severity - 1]
    out = np.empty_like(x)
    for i, image in enumerate(x):  # JPEG encodes one image at a time
        output = io.BytesIO()
        Image.fromarray(image).save(output, "JPEG", quality=c)
        output.seek(0)
        out[i] = np.asarray(Image.open(output).convert("RGB"))
    return out


def saturate(x, severity, rngs):
    c = [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)][severity - 1]
    x = _adjust_hsv(x, lambda h, s, v: (h, np.clip(s * c[0] + c[1], 0, 1), v))
    return np.clip(x, 0, 1) * 255


_FUNCTIONS = {name: globals()[name] for name in CORRUPTIONS}


# --- public API ---------------------------------------------------------------------------------------------------


def _check_corruption(corruption):
    if not isinstance(corruption, str) or corruption not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {', '.join(CORRUPTIONS)}; got {corruption!r}")


def _check_severity(severity):
    if isinstance(severity, (bool, np.bool_)) or not isinstance(severity, (int, np.integer)) \
            or int(severity) not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}; got {severity!r}")


def _check_seed(seed):
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0; got {seed!r}")


def corrupt(images, corruption, severity, seed=0):
    """Corrupt a batch of CIFAR-10 images as CIFAR-10-C does.

    :param images: uint8 numpy array (N, 32, 32, 3), RGB, NHWC.
    :param corruption: one of :data:`CORRUPTIONS`.
    :param severity: one of :data:`SEVERITIES` (1 mildest, 5 strongest).
    :param seed: integer >= 0; the result depends only on (images, corruption, severity, seed), and the corruption
        of an image does not depend on the images after it.
    :return: uint8 numpy array (N, 32, 32, 3).
    """
    _check_corruption(corruption)
    _check_severity(severity)
    _check_seed(seed)
    if not isinstance(images, np.ndarray):
        raise ValueError(f"images must be a numpy array (N, 32, 32, 3) of dtype uint8; got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must have dtype uint8 (values 0..255); got {images.dtype}")
    if images.ndim != 4 or images.shape[1:] != (SIZE, SIZE, 3):
        raise ValueError(f"images must have shape (N, 32, 32, 3) (NHWC, RGB); got {images.shape}")
    if len(images) == 0:
        return images.copy()
    out = _FUNCTIONS[corruption](np.ascontiguousarray(images), int(severity), _streams(seed, corruption, severity))
    if out.dtype == np.uint8:
        return out
    return np.clip(out, 0, 255).astype(np.uint8)  # np.uint8(x) of the official script: truncation


def to_uint8_nhwc(images):
    """Float (N, 3, H, W) in [0, 1] (tensor or array) -> uint8 (N, H, W, 3), exactly round(x * 255)."""
    array = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    return np.rint(array.astype(np.float64) * 255).clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1).copy()


def _save_npy(path, array):
    atomic_write(path, lambda f: np.save(f, array))


def _npy_shape(path):
    """(shape, dtype) of a .npy file without reading it, or None if it is missing or unreadable."""
    try:
        array = np.load(path, mmap_mode="r")
        return array.shape, array.dtype
    except (OSError, ValueError):
        return None


def generated_folder_name(n):
    """``CIFAR-10-C`` for the full test set, ``CIFAR-10-C-first<n>`` for its first ``n`` images."""
    return CIFAR10C_FOLDER if n == CIFAR10C_TEST_SIZE else f"{CIFAR10C_FOLDER}-first{n}"


def severity_file_name(corruption, severity):
    """``<corruption>-severity<s>.npy``: one severity of a corruption, in a generated folder that does not hold all
    five (RobustBench's ``<corruption>.npy`` holds the five)."""
    return f"{corruption}-severity{int(severity)}.npy"


def _check_severities(severities):
    """``severities`` of :func:`generate_cifar10c` -> a sorted tuple of distinct severities."""
    if isinstance(severities, str) and severities == "all":
        return SEVERITIES
    allowed = f"'all' or a non-empty list of severities from {SEVERITIES}"
    if isinstance(severities, (bool, np.bool_, str)):
        raise ValueError(f"severities must be {allowed}; got {severities!r}")
    if isinstance(severities, (int, np.integer)):
        severities = (severities,)
    try:
        severities = tuple(severities)
    except TypeError:
        raise ValueError(f"severities must be {allowed}; got {severities!r}") from None
    if not severities:
        raise ValueError(f"severities must be {allowed}; got an empty list")
    for severity in severities:
        if isinstance(severity, (bool, np.bool_)) or not isinstance(severity, (int, np.integer)) \
                or int(severity) not in SEVERITIES:
            raise ValueError(f"severities must be {allowed}; got {severity!r} among them")
    return tuple(sorted({int(s) for s in severities}))


def stored_severities(folder, corruption, n):
    """The severities of ``corruption`` that the generated ``folder`` holds for ``n`` images: all five when
    ``<corruption>.npy`` has its 5 n rows, else those whose ``<corruption>-severity<s>.npy`` has n rows."""
    image = (SIZE, SIZE, 3)
    if _npy_shape(os.path.join(folder, corruption + ".npy")) == ((len(SEVERITIES) * n, *image), np.dtype(np.uint8)):
        return SEVERITIES
    return tuple(s for s in SEVERITIES if _npy_shape(os.path.join(folder, severity_file_name(corruption, s)))
                 == ((n, *image), np.dtype(np.uint8)))


def generate_cifar10c(data_dir, out_dir, corruptions=CORRUPTIONS, n=CIFAR10C_TEST_SIZE, seed=0, progress=True,
                      severities="all"):
    """Write CIFAR-10-C for the first ``n`` test images into ``<out_dir>/CIFAR-10-C[-first<n>]/``.

    With all five severities (the default) a corruption is stored in RobustBench's layout, as the official files:
    ``<corruption>.npy``, uint8 (5 n, 32, 32, 3), severity s in rows [(s - 1) n, s n). With some of them
    (``severities=(1,)``, what an evaluation of ``cifar10c-1`` generates), only those are computed and stored, one
    file each, ``<corruption>-severity<s>.npy`` (n rows): a fifth of the time and disk per severity. A later call
    adds the severities it asks for and computes nothing already stored; asking for all five assembles
    ``<corruption>.npy`` from the stored severities plus the missing ones and then removes the per-severity files.
    ``labels.npy`` (uint8, the test labels tiled 5 times, as the official one) is always written. With ``n < 10000``
    the folder is ``CIFAR-10-C-first<n>`` (RobustBench's reader assumes 10,000 images per severity, so a subset must
    not pass for the official layout). Every severity has its own random streams (:func:`corrupt`), so a severity's
    images are the same whether it is generated alone or with the others.

    Each file is written atomically as soon as it is computed, and files already there with the right shape are
    kept, so a killed run resumes where it stopped. ``GENERATED.json`` records the generator, its version, the seed,
    ``n``, the corruptions stored with all five severities (``corruptions``) and the severities stored of each
    (``severities``), which tells generated files from official ones.

    :param data_dir: folder holding ``cifar-10-batches-py/``.
    :param out_dir: folder to write ``CIFAR-10-C[-first<n>]/`` into.
    :param corruptions: names from :data:`CORRUPTIONS`.
    :param n: the first ``n`` test images, 1 <= n <= 10000.
    :param seed: integer >= 0 (see :func:`corrupt`).
    :param progress: tqdm progress bar over the corruptions.
    :param severities: ``"all"`` (default: the five, in RobustBench's layout) or a list of severities from
        :data:`SEVERITIES` to generate and store only those.
    :return: the folder written.
    """
    if isinstance(corruptions, str):
        corruptions = (corruptions,)
    corruptions = tuple(corruptions)
    for corruption in corruptions:
        _check_corruption(corruption)
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or not 1 <= n <= CIFAR10C_TEST_SIZE:
        raise ValueError(f"n must be an integer in 1..{CIFAR10C_TEST_SIZE}; got {n!r}")
    _check_seed(seed)
    severities = _check_severities(severities)
    n, seed = int(n), int(seed)
    folder = os.path.join(out_dir, generated_folder_name(n))
    manifest_path = os.path.join(folder, MANIFEST)
    if os.path.isfile(manifest_path):
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
        previous = (manifest.get("generator_version"), manifest.get("seed"), manifest.get("n"))
        if previous != (GENERATOR_VERSION, seed, n):
            raise ValueError(
                f"{folder} holds files generated with (generator_version, seed, n) = {previous}, not "
                f"{(GENERATOR_VERSION, seed, n)}: choose another out_dir or delete that folder")
    elif os.path.isfile(os.path.join(folder, "labels.npy")):
        raise ValueError(f"{folder} holds CIFAR-10-C files that this generator did not write (no {MANIFEST}: the "
                         "official files?); choose another out_dir rather than mixing generated files into them")

    from benchmarks.data import load_cifar10

    images, labels = load_cifar10(data_dir, train=False, n=n, download=False)
    if len(images) != n:
        raise ValueError(f"n={n} but the CIFAR-10 test set in {data_dir} has only {len(images)} images")
    images = to_uint8_nhwc(images)
    os.makedirs(folder, exist_ok=True)
    labels_path = os.path.join(folder, "labels.npy")
    all_labels = np.tile(labels.numpy().astype(np.uint8), len(SEVERITIES))  # uint8, as the official labels.npy
    if _npy_shape(labels_path) != (all_labels.shape, all_labels.dtype):
        _save_npy(labels_path, all_labels)

    # What the folder holds, read from the files themselves (each written atomically): the manifest repeats it.
    stored = {name: stored_severities(folder, name, n) for name in CORRUPTIONS}

    def write_manifest():
        text = json.dumps({
            "generator": "benchmarks.corruptions", "generator_version": GENERATOR_VERSION, "seed": seed, "n": n,
            "corruptions": [name for name in CORRUPTIONS if stored[name] == SEVERITIES],
            "severities": {name: list(stored[name]) for name in CORRUPTIONS if stored[name]},
            "source": SOURCE, "official_files": OFFICIAL_URL,
            "note": "regenerated CIFAR-10-C, not the official files; see benchmarks/corruptions.py for the "
                    "differences",
        }, indent=2) + "\n"
        atomic_write_text(text, manifest_path)

    write_manifest()
    from tqdm.auto import tqdm

    bar = tqdm(corruptions, desc="CIFAR-10-C", unit="corruption", disable=not progress)
    for corruption in bar:
        bar.set_postfix_str(corruption)
        full = os.path.join(folder, corruption + ".npy")
        singles = {s: os.path.join(folder, severity_file_name(corruption, s)) for s in SEVERITIES}
        had = stored[corruption]
        if had != SEVERITIES and os.path.exists(full):
            os.remove(full)  # a truncated five-severity file of ours: the reader would prefer it to the others
        if severities == SEVERITIES and had != SEVERITIES:
            # RobustBench's layout: the stored severities are read back, only the missing ones computed.
            data = np.empty((len(SEVERITIES) * n, SIZE, SIZE, 3), dtype=np.uint8)
            for s in SEVERITIES:
                data[(s - 1) * n:s * n] = np.load(singles[s]) if s in had else corrupt(images, corruption, s,
                                                                                          seed=seed)
            _save_npy(full, data)
        else:
            for s in severities:
                if s not in had:
                    _save_npy(singles[s], corrupt(images, corruption, s, seed=seed))
        if os.path.isfile(full):  # the five-severity file holds them all: per-severity copies are redundant
            for path in singles.values():
                if os.path.exists(path):
                    os.remove(path)
        now = stored_severities(folder, corruption, n)
        if now != had:
            stored[corruption] = now
            write_manifest()
    return folder


def cifar10c_folder(data_dir, cache_dir=None, n=CIFAR10C_TEST_SIZE, severity=None):
    """The CIFAR-10-C folder to read ``n`` images per severity from, or None.

    The official (full) folder ``<data_dir>/CIFAR-10-C`` wins whenever it has ``labels.npy``; else the full
    generated ``<cache_dir>/CIFAR-10-C``; else ``<cache_dir>/CIFAR-10-C-first<m>`` for the smallest m >= n.

    :param severity: None (any folder with ``labels.npy``), or one of :data:`SEVERITIES`: a folder of ``cache_dir``
        (m images per severity: ``CIFAR-10-C-first<m>``, or 10000) counts only if it holds that severity of all 19
        corruptions, complete (``<corruption>.npy`` of 5 m rows or ``<corruption>-severity<s>.npy`` of m rows, see
        :func:`generate_cifar10c`), so that an evaluation at a severity not generated yet generates it instead of
        failing on the missing files. The official folder is not checked:
        if it is incomplete, reading it fails with the missing file's path, rather than generated images silently
        standing in for the official ones.
    """
    if severity is not None:
        _check_severity(severity)

    def holds(folder, m):
        if not os.path.isfile(os.path.join(folder, "labels.npy")):
            return False
        return severity is None or all(int(severity) in stored_severities(folder, name, m) for name in CORRUPTIONS)

    official = os.path.join(data_dir, CIFAR10C_FOLDER)
    if os.path.isfile(os.path.join(official, "labels.npy")):
        return official
    if cache_dir is None or not os.path.isdir(cache_dir):
        return None
    if holds(os.path.join(cache_dir, CIFAR10C_FOLDER), CIFAR10C_TEST_SIZE):
        return os.path.join(cache_dir, CIFAR10C_FOLDER)
    prefix = CIFAR10C_FOLDER + "-first"
    subsets = []
    for name in os.listdir(cache_dir):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            m = int(name[len(prefix):])
            if m >= n and holds(os.path.join(cache_dir, name), m):
                subsets.append((m, name))
    return os.path.join(cache_dir, min(subsets)[1]) if subsets else None


def load_cifar10c(folder, corruption, severity, n=None):
    """Images float32 (n, 3, 32, 32) in [0, 1] and labels int64 (n,) of one corruption and severity.

    :param folder: a CIFAR-10-C folder (official or generated, see :func:`cifar10c_folder`): ``<corruption>.npy``
        with the five severities, or (a generated folder holding some) ``<corruption>-severity<s>.npy``.
    :param n: the first ``n`` images of that severity (default: all, ``len(file) // 5``).
    """
    import torch

    _check_corruption(corruption)
    _check_severity(severity)
    advice = (f"generate it with `python -m benchmarks cifar10c` (benchmarks.corruptions.generate_cifar10c) or put "
              f"the official CIFAR-10-C files ({OFFICIAL_URL}) in {os.path.abspath(folder)}")
    full = os.path.join(folder, corruption + ".npy")
    single = os.path.join(folder, severity_file_name(corruption, severity))
    labels_path = os.path.join(folder, "labels.npy")
    if not os.path.isfile(full) and not os.path.isfile(single):
        raise FileNotFoundError(f"CIFAR-10-C file missing: {os.path.abspath(full)} (nor {os.path.basename(single)}, "
                                f"severity {severity} alone); {advice}")
    if not os.path.isfile(labels_path):
        raise FileNotFoundError(f"CIFAR-10-C file missing: {os.path.abspath(labels_path)}; {advice}")
    labels = np.load(labels_path, mmap_mode="r")
    label_rows = len(labels) // len(SEVERITIES)  # labels.npy holds the five severities' labels, alike
    if os.path.isfile(full):  # the five severities, RobustBench's layout
        images = np.load(full, mmap_mode="r")
        rows = len(images) // len(SEVERITIES)
        start = (int(severity) - 1) * rows
    else:  # this severity alone
        images = np.load(single, mmap_mode="r")
        rows = min(len(images), label_rows)
        start = 0
    if n is None:
        n = rows
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or not 1 <= n <= rows:
        raise ValueError(f"n must be an integer in 1..{rows} (the images per severity in {folder}); got {n!r}")
    label_start = (int(severity) - 1) * label_rows
    x = np.asarray(images[start:start + n]).transpose(0, 3, 1, 2).astype(np.float32) / 255  # as RobustBench
    y = np.asarray(labels[label_start:label_start + n]).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def corruption_grid(path, images_uint8, severities=(1, 3, 5), seed=0, columns=10):
    """A figure of one image under every corruption, laid out to be read at a README's width: the clean image and
    the 19 corruptions in blocks of ``columns`` (two blocks by default), one row per severity in ``severities``
    inside each block. Written as a PNG to ``path``. The images are regenerated here (:func:`corrupt`, the official
    ``make_cifar_c.py`` parameters), not read from the official CIFAR-10-C files; the title says so.

    :param images_uint8: uint8 (32, 32, 3) or (N, 32, 32, 3) (the first image is shown).
    :param columns: images per row (10: two blocks of clean + 19 corruptions).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from benchmarks.figures import save_figure

    image = np.asarray(images_uint8)
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or len(image) == 0:
        raise ValueError(f"images_uint8 must have shape (32, 32, 3) or (N, 32, 32, 3); got {image.shape}")
    image = image[:1]
    severities = tuple(severities)
    for severity in severities:
        _check_severity(severity)
    if not severities:
        raise ValueError(f"severities must list at least one of {SEVERITIES}")
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns must be an integer >= 1, got {columns!r}")
    corrupted = {(name, s): corrupt(image, name, s, seed=seed)[0] for name in CORRUPTIONS for s in severities}

    names = ("clean",) + CORRUPTIONS
    blocks = -(-len(names) // columns)
    rows = blocks * len(severities)
    fig = Figure(figsize=(0.82 * columns + 0.5, (0.9 * len(severities) + 0.35) * blocks + 0.45), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False)
    for index, name in enumerate(names):
        block, col = divmod(index, columns)
        for r, severity in enumerate(severities):
            ax = axes[block * len(severities) + r, col]
            ax.imshow(image[0] if name == "clean" else corrupted[name, severity], interpolation="nearest")
            if r == 0:
                # One naming style: the official names with spaces, wrapped at the first space when long.
                label = name.replace("_", " ")
                ax.set_title(label.replace(" ", "\n", 1) if len(label) > 11 else label, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_linewidth(0.4)
    for index in range(len(names), blocks * columns):  # empty cells of the last block
        block, col = divmod(index, columns)
        for r in range(len(severities)):
            axes[block * len(severities) + r, col].set_visible(False)
    for block in range(blocks):
        for r, severity in enumerate(severities):
            axes[block * len(severities) + r, 0].set_ylabel(f"severity {severity}", fontsize=7)
    fig.suptitle("CIFAR-10-C corruptions, regenerated here with the official make_cifar_c.py parameters "
                 "(not the official files)", fontsize=8)
    save_figure(fig, path)
    return None
