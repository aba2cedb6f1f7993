"""CIFAR-10-C generator (benchmarks/corruptions.py) on real CIFAR-10 test images.

Every corruption and severity is checked for shape, dtype, determinism and effect; the severities against the
official parameter tables (monotone where the tables are); several corruptions against an independent computation
(colorsys, PIL, OpenCV, scipy, the official pixel loop of glass_blur, the official frost photographs read from the
imagecorruptions wheel); the generator's on-disk layout against RobustBench's own reader.
"""

import base64
import colorsys
import hashlib
import importlib.metadata
import io
import json
import os
import shutil

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter, map_coordinates
from scipy.ndimage import zoom as scipy_zoom

from benchmarks import corruptions as C
from benchmarks.corruptions import (CORRUPTIONS, SEVERITIES, cifar10c_folder, corrupt, corruption_grid,
                                    generate_cifar10c, load_cifar10c)

#: Corruptions without any random draw: the seed must not matter.
DETERMINISTIC = {"defocus_blur", "zoom_blur", "gaussian_blur", "brightness", "contrast", "pixelate",
                 "jpeg_compression", "saturate"}


@pytest.fixture(scope="module")
def uint8_images(cifar_test):
    """The first 64 real CIFAR-10 test images as uint8 NHWC, exactly round(x * 255)."""
    images, _ = cifar_test
    return (images[:64] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy().copy()


def _rms(a, b):
    return float(np.sqrt(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()))


def test_corruption_list():
    assert len(CORRUPTIONS) == 19 and len(set(CORRUPTIONS)) == 19
    assert CORRUPTIONS[:4] == ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")
    assert CORRUPTIONS[-1] == "saturate" and SEVERITIES == (1, 2, 3, 4, 5)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_severity_changes_every_image_deterministically(name, uint8_images):
    x = uint8_images[:8]
    before = x.copy()
    for severity in SEVERITIES:
        out = corrupt(x, name, severity, seed=0)
        assert out.dtype == np.uint8 and out.shape == (8, 32, 32, 3)
        changed = (out != x).reshape(8, -1).any(axis=1)
        assert changed.all(), f"{name} severity {severity} left images {np.flatnonzero(~changed)} unchanged"
        np.testing.assert_array_equal(corrupt(x, name, severity, seed=0), out)  # same seed, same result
        # an image's corruption does not depend on the images after it
        np.testing.assert_array_equal(corrupt(x[:3], name, severity, seed=0), out[:3])
        other = corrupt(x, name, severity, seed=1)
        if name in DETERMINISTIC:
            np.testing.assert_array_equal(other, out)
        else:
            assert (other != out).any(), f"{name} severity {severity} ignores the seed"
    np.testing.assert_array_equal(x, before)  # the input is left alone


# Pixel distance to the clean image must grow from severity 1 to 5, strictly, except where the official CIFAR
# parameter tables (make_cifar_c.py) themselves are not ordered that way. For those, the pairs that the tables do
# order are asserted instead, and why is said below.
NOT_MONOTONE = {
    # (sigma, max_delta, iterations) = (0.05,1,1), (0.25,1,1), (0.4,1,1), (0.25,1,2), (0.4,1,2): more blur makes
    # the local pixel shuffle move more similar pixels, so the distance falls with sigma; the second shuffle
    # iteration of severities 4 and 5 adds far more.
    "glass_blur": lambda d: max(d[0], d[1], d[2]) < min(d[3], d[4]) and d[0] < d[4],
    # (radius, sigma) = (6,1), (6,1.5), (6,2), (8,2), (9,2.5): with sigma 2 the half-Gaussian taps beyond 6 pixels
    # weigh ~1e-4, so severities 3 and 4 are the same blur (up to their random angles).
    "motion_blur": lambda d: d[0] < d[1] < d[2] and d[3] < d[4] and abs(d[2] - d[3]) < 0.1 * d[2],
    # (image weight, frost weight) = (1,.2), (1,.3), (.9,.4), (.85,.4), (.75,.45): severity 4 is severity 3 with a
    # darker image, and at 5 the image loses more weight than the frost gains (the photographs average about
    # 164/255, CIFAR-10 images 115/255), so 4 and 5 are closer to the image than 3 (official expectation on these
    # images: RMS 32.5, 48.3, 55.2, 51.0, 51.2); only the first steps and the ends are ordered.
    "frost": lambda d: d[0] < d[1] < d[2] and d[0] < d[4],
    # severities 1-3 are water (growing), 4-5 mud (growing) at a different scale
    "spatter": lambda d: d[0] < d[1] < d[2] and d[3] < d[4] and d[0] < d[4],
    # (alpha, sigma, affine) = 32 * (0,0,.08), (.05,.2,.07), (.08,.06,.06), (.1,.04,.05), (.1,.03,.03): the random
    # affine shrinks from +-2.6 to +-1 pixel while the elastic field stays under a pixel, so the distance *falls*
    "elastic_transform": lambda d: d[0] > d[4],
    # saturation scale (factor, shift) = (.3,0), (.1,0), (1.5,0), (2,.1), (2.5,.2): desaturation at 1-2, then
    # growing over-saturation at 3-5
    "saturate": lambda d: d[0] < d[1] and d[2] < d[3] < d[4] and d[0] < d[4],
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_ordering(name, uint8_images):
    x = uint8_images[:32]
    d = [_rms(corrupt(x, name, s, seed=0), x) for s in SEVERITIES]
    if name in NOT_MONOTONE:
        assert NOT_MONOTONE[name](d), f"{name}: RMS distances {np.round(d, 2)}"
    else:
        assert all(a < b for a, b in zip(d, d[1:])), f"{name}: RMS distances {np.round(d, 2)} not increasing"


def _truncation_boundary(value):
    """True where value * 255 is within float noise of an integer: truncation may land on either side there."""
    scaled = value * 255
    return np.abs(scaled - np.round(scaled)) < 1e-9


@pytest.mark.parametrize("name", ["brightness", "saturate"])
def test_hsv_corruptions_against_colorsys(name, uint8_images):
    x = uint8_images[:2]
    pixels = x.reshape(-1, 3) / 255.
    for severity in SEVERITIES:
        expected = []
        for p in pixels:
            h, s, v = colorsys.rgb_to_hsv(*p)
            if name == "brightness":
                v = min(max(v + [.05, .1, .15, .2, .3][severity - 1], 0), 1)
            else:
                factor, shift = [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)][severity - 1]
                s = min(max(s * factor + shift, 0), 1)
            expected.append(colorsys.hsv_to_rgb(h, s, v))
        expected = np.clip(np.array(expected), 0, 1)
        ours = corrupt(x, name, severity).reshape(-1, 3).astype(np.int64)
        truncated = (expected * 255).astype(np.int64)
        differ = ours != truncated
        # colorsys and skimage compute the hue with different (equally exact) arithmetic: only values that sit on
        # an integer may truncate differently, and then by one
        assert np.abs(ours - truncated).max() <= 1
        assert _truncation_boundary(expected[differ]).all()
        assert differ.mean() < 0.05


@pytest.mark.parametrize("severity, c", [(1, 0.04), (3, 0.08), (5, 0.10)])
def test_gaussian_noise_statistics(severity, c):
    grey = np.full((64, 32, 32, 3), 128, dtype=np.uint8)  # far enough from 0 and 255 that nothing is clipped
    residual = corrupt(grey, "gaussian_noise", severity, seed=3) / 255. - 128 / 255.
    # truncation to uint8 shifts the mean by half a level and adds a level^2 / 12 of variance
    assert abs(residual.mean() + 0.5 / 255) < 0.002
    assert abs(residual.std() - np.sqrt(c ** 2 + (1 / 255) ** 2 / 12)) < 0.02 * c


def test_shot_and_impulse_noise_statistics():
    grey = np.full((64, 32, 32, 3), 128, dtype=np.uint8)
    # Poisson(x c) / c has variance x / c, with c = 500 at severity 1
    shot = corrupt(grey, "shot_noise", 1, seed=0) / 255.
    assert abs(shot.std() - np.sqrt(128 / 255 / 500)) < 0.03 * np.sqrt(128 / 255 / 500)
    # salt & pepper replaces a fraction c (0.07 at severity 5) of the values, half by 255 and half by 0
    impulse = corrupt(grey, "impulse_noise", 5, seed=0)
    assert set(np.unique(impulse).tolist()) == {0, 128, 255}
    assert abs((impulse == 255).mean() - 0.035) < 0.003 and abs((impulse == 0).mean() - 0.035) < 0.003


def test_contrast_closed_form(uint8_images):
    x = uint8_images[:4]
    for severity, c in zip(SEVERITIES, [.75, .5, .4, .3, 0.15]):
        images = x / 255.
        means = images.mean(axis=(1, 2), keepdims=True)  # per image and channel
        expected = (np.clip((images - means) * c + means, 0, 1) * 255).astype(np.uint8)
        np.testing.assert_array_equal(corrupt(x, "contrast", severity), expected)


def test_jpeg_and_pixelate_match_pil_per_image(uint8_images):
    x = uint8_images[:6]
    for severity in SEVERITIES:
        quality = [80, 65, 58, 50, 40][severity - 1]
        side = int(32 * [0.95, 0.9, 0.85, 0.75, 0.65][severity - 1])
        jpeg, pixelated = [], []
        for image in x:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, "JPEG", quality=quality)
            jpeg.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue()))))
            small = Image.fromarray(image).resize((side, side), Image.BOX)
            pixelated.append(np.asarray(small.resize((32, 32), Image.BOX)))
        np.testing.assert_array_equal(corrupt(x, "jpeg_compression", severity), np.stack(jpeg))
        np.testing.assert_array_equal(corrupt(x, "pixelate", severity), np.stack(pixelated))


def _stream(seed):
    """A stand-in for the module's per-draw generator streams: fresh generators from a known seed."""
    k = 0
    while True:
        yield np.random.default_rng([seed, k])
        k += 1


@pytest.mark.parametrize("severity", [1, 4])
def test_glass_blur_matches_official_pixel_loop(severity, uint8_images):
    """The official loop, verbatim (including its tuple 'swap' of numpy views), with the same random offsets."""
    sigma, max_delta, iterations = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][severity - 1]
    x = uint8_images[:3]
    ours = np.clip(C.glass_blur(x, severity, _stream(7)), 0, 255).astype(np.uint8)
    draws = _stream(7)
    offsets = [next(draws).integers(-max_delta, max_delta, size=(3, 30, 30, 2)) for _ in range(iterations)]
    for i, image in enumerate(x):
        img = np.uint8(gaussian_filter(image / 255., sigma=(sigma, sigma, 0), mode="nearest") * 255)
        for it in range(iterations):
            for h in range(32 - max_delta, max_delta, -1):
                for w in range(32 - max_delta, max_delta, -1):
                    dx, dy = offsets[it][i, 31 - h, 31 - w]
                    h_prime, w_prime = h + dy, w + dx
                    img[h, w], img[h_prime, w_prime] = img[h_prime, w_prime], img[h, w]
        expected = np.uint8(np.clip(gaussian_filter(img / 255., sigma=(sigma, sigma, 0), mode="nearest"), 0, 1)
                            * 255)
        np.testing.assert_array_equal(ours[i], expected)


def test_motion_blur_is_a_replicate_border_line_filter(uint8_images):
    x = uint8_images[:5]
    angles = np.array([0.0, 30.0, -45.0, 90.0, -120.0])
    radius, sigma = 9, 2.5
    ours = C._motion_blur(x, radius, sigma, angles)
    width = 2 * radius + 1
    taps = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2))
    taps /= taps.sum()
    for image, angle, out in zip(x, angles, ours):
        kernel = np.zeros((2 * width + 1, 2 * width + 1))
        for i, weight in enumerate(taps):  # ImageMagick: tap i at (round(i cos a), round(i sin a)), rounding down .5
            ox = int(np.ceil(i * np.cos(np.deg2rad(angle)) - 0.5))
            oy = int(np.ceil(i * np.sin(np.deg2rad(angle)) - 0.5))
            kernel[width + oy, width + ox] += weight
        expected = cv2.filter2D(image.astype(np.float64), -1, kernel, borderType=cv2.BORDER_REPLICATE)
        # truncated to 8 bits, as the official (ImageMagick) files; rounding would be one level up about half the time
        floor = np.floor(expected + 1e-9)
        assert np.abs(out - floor).max() <= 1 and (out == floor).mean() > 0.999
        assert 0.3 < (out != np.floor(expected + 0.5)).mean() < 0.7
    # angle 0 blurs along rows only: an image constant along each row is unchanged
    stripes = np.repeat(x[:1, :, :1, :], 32, axis=2)
    np.testing.assert_array_equal(C._motion_blur(stripes, radius, sigma, [0.0]), stripes)


def test_motion_blur_is_the_floor_of_the_exact_blur():
    """Closed forms. On the ramp x[:, c] = c, at angle 0, tap i reads column min(c + i, 31), so away from the right
    edge the blur is c + m, m the mean tap offset; at (radius, sigma) = (6, 1) (severity 1), m = 0.52: floor gives c,
    rounding c + 1. On constant images the exact blur is the constant, which float noise must not push down."""
    radius, sigma = 6, 1
    taps = np.arange(2 * radius + 1)
    weights = np.exp(-taps ** 2 / (2 * sigma ** 2))
    m = (taps * weights).sum() / weights.sum()
    assert 0.5 < m < 0.6
    ramp = np.broadcast_to(np.arange(32, dtype=np.uint8)[None, None, :, None], (1, 32, 32, 3)).copy()
    out = C._motion_blur(ramp, radius, sigma, [0.0])[0]
    interior = slice(0, 32 - len(taps) + 1)  # columns whose taps stay inside the image
    np.testing.assert_array_equal(out[:, interior], ramp[0, :, interior])  # floor(c + m) = c
    assert (out[:, interior] != np.floor(ramp[0, :, interior] + m + 0.5)).all()  # round-to-nearest would be c + 1
    exact = np.array([(weights * np.minimum(c + taps, 31)).sum() / weights.sum() for c in range(32)])
    # (the last column's blur is exactly 31: the + 1e-9 only undoes float noise there, as in the module)
    np.testing.assert_array_equal(out, np.broadcast_to(np.floor(exact + 1e-9)[None, :, None], (32, 32, 3)))
    # every level, each image at its own random angle (severity 5 radius and sigma), is left as it is
    constants = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None, None, None], (256, 32, 32, 3))
    angles = np.random.default_rng(0).uniform(-180, 180, size=256)
    np.testing.assert_array_equal(C._motion_blur(constants, 9, 2.5, angles), constants)


FROST_NAMES = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg"]
FROST_WEIGHTS = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)]


@pytest.fixture(scope="module")
def official_frost():
    """The official frost photographs, found through the imagecorruptions wheel's own file list (not through the
    module), checked against the sha256 its RECORD holds, decoded with PIL (not cv2) and shrunk as make_cifar_c.py
    does: ``cv2.resize(frost, (0, 0), fx=0.2, fy=0.2)``. Returns (folder, RGB photographs)."""
    distribution = importlib.metadata.distribution("imagecorruptions")
    record = {str(f): f for f in distribution.files if str(f).startswith("imagecorruptions/frost/")}
    assert sorted(record) == ["imagecorruptions/frost/" + name for name in FROST_NAMES]
    folder = distribution.locate_file("imagecorruptions/frost")
    photographs = []
    for name in FROST_NAMES:
        entry = record["imagecorruptions/frost/" + name]
        digest = hashlib.sha256((folder / name).read_bytes()).digest()
        assert entry.hash.mode == "sha256"
        assert base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == entry.hash.value
        with Image.open(folder / name) as image:
            rgb = np.asarray(image.convert("RGB"))  # the PNGs are RGBA: cv2.imread drops alpha, so does this
        photographs.append(cv2.resize(rgb, (0, 0), fx=0.2, fy=0.2))  # per channel: RGB or BGR order alike
    return folder, photographs


def test_frost_uses_the_official_photographs(official_frost):
    folder, photographs = official_frost
    assert os.path.samefile(str(C._frost_folder()), str(folder))
    # the module's recorded hashes are those of the wheel's files
    assert [name for name, _ in C.FROST_PHOTOGRAPHS] == FROST_NAMES
    for name, sha256 in C.FROST_PHOTOGRAPHS:
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha256
    ours = C.frost_photographs()
    assert [p.shape for p in ours] == [(120, 180, 3), (63, 112, 3), (63, 112, 3), (70, 105, 3), (99, 132, 3),
                                      (65, 97, 3)]
    for name, mine, theirs in zip(FROST_NAMES, ours, photographs):
        np.testing.assert_array_equal(mine, theirs, err_msg=name)  # cv2's decoder (module) = PIL's (here)
        # and both equal cv2.imread, BGR -> RGB, as the official
        np.testing.assert_array_equal(mine, cv2.resize(cv2.imread(str(folder / name)), (0, 0), fx=0.2,
                                                       fy=0.2)[..., [2, 1, 0]], err_msg=name)
        assert not mine.flags.writeable  # the cache cannot be altered by a caller
    assert C.frost_photographs() is ours  # read once


@pytest.mark.parametrize("severity", [1, 5])
def test_frost_is_the_official_blend_of_a_crop(severity, uint8_images, official_frost):
    """The official frost, image by image, with the same draws: photograph randint(5), then row and column offsets
    randint(0, side - 32) of that photograph, then clip(c0 x + c1 crop, 0, 255)."""
    photographs = official_frost[1]
    x = uint8_images[:16]
    ours = C.frost(x, severity, _stream(5))
    draws = _stream(5)
    idx = next(draws).integers(5, size=16)
    x_start = next(draws).integers(0, np.array([p.shape[0] for p in photographs])[idx] - 32)
    y_start = next(draws).integers(0, np.array([p.shape[1] for p in photographs])[idx] - 32)
    assert len(set(idx.tolist())) >= 3 and idx.max() <= 4  # several photographs, never frost6.jpg
    c = FROST_WEIGHTS[severity - 1]
    for i in range(16):
        crop = photographs[idx[i]][x_start[i]:x_start[i] + 32, y_start[i]:y_start[i] + 32]
        np.testing.assert_array_equal(ours[i], np.clip(c[0] * np.array(x[i]) + c[1] * crop, 0, 255))


def test_frost_strength_matches_the_official(uint8_images):
    """Mean |frost - clean| per severity, on the 64 images of the fixture, against the official frost's
    expectation there: the official procedure (image by image, numpy's global RandomState, the same photographs)
    averaged over 300 draws of the 64 images gave 30.65, 45.41, 50.49, 45.88, 44.80 (levels), with a standard
    deviation of 0.9-1.9 for one draw. +-12 % is 4 to 6 of those; the procedural textures used before were at
    0.59-0.71 of the official."""
    x = uint8_images
    official = [30.65, 45.41, 50.49, 45.88, 44.80]
    d = [np.abs(corrupt(x, "frost", s, seed=0).astype(np.float64) - x).mean() for s in SEVERITIES]
    ratio = np.array(d) / official
    assert (np.abs(ratio - 1) < 0.12).all(), f"mean distances {np.round(d, 2)}, ratio to official {ratio.round(3)}"
    assert d[0] < d[1] < d[2]  # grows while the image keeps its full weight (the expectation falls after 3)
    brightening = [(corrupt(x, "frost", s, seed=0).astype(np.float64) - x).mean() for s in SEVERITIES]
    assert all(b > 20 for b in brightening)  # frost lightens: the photographs are brighter than the images


def test_frost_refuses_other_photographs(official_frost, tmp_path, monkeypatch):
    folder = official_frost[0]
    copy = tmp_path / "frost"
    shutil.copytree(str(folder), str(copy))
    photographs = C._load_frost_photographs(copy)  # an exact copy is accepted
    assert len(photographs) == 6
    with open(copy / "frost4.jpg", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match=r"frost4\.jpg .*sha256"):
        C._load_frost_photographs(copy)
    shutil.copy(str(folder / "frost4.jpg"), str(copy / "frost4.jpg"))
    os.remove(copy / "frost6.jpg")
    with pytest.raises(FileNotFoundError, match=r"frost6\.jpg is missing"):
        C._load_frost_photographs(copy)
    monkeypatch.setattr(C, "FROST_PACKAGE", "imagecorruptions_not_installed")
    with pytest.raises(ModuleNotFoundError, match="pip install imagecorruptions_not_installed"):
        C._frost_folder()


def test_zoom_blur_and_defocus_match_scipy_and_opencv(uint8_images):
    x = uint8_images[:4]
    factors = np.arange(1, 1.26, 0.01)  # severity 5
    images = (x / 255.).astype(np.float32)
    total = np.zeros_like(images)
    for z in factors:  # the official clipped_zoom, image by image, with scipy.ndimage.zoom
        for i, image in enumerate(images):
            ch = int(np.ceil(32 / z))
            top = (32 - ch) // 2
            zoomed = scipy_zoom(image[top:top + ch, top:top + ch], (z, z, 1), order=1)
            trim = (zoomed.shape[0] - 32) // 2
            total[i] += zoomed[trim:trim + 32, trim:trim + 32]
    expected = (np.clip((images + total) / (len(factors) + 1), 0, 1) * 255).astype(np.uint8)
    ours = corrupt(x, "zoom_blur", 5)
    assert np.abs(ours.astype(int) - expected).max() <= 1 and (ours == expected).mean() > 0.99

    # defocus: the official 17x17 disk kernel with cv2.filter2D, channel by channel
    for severity, (radius, alias_blur) in zip(SEVERITIES, [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)]):
        grid = np.arange(-8, 9)
        xx, yy = np.meshgrid(grid, grid)
        disk = np.array(xx ** 2 + yy ** 2 <= radius ** 2, dtype=np.float32)
        kernel = cv2.GaussianBlur(disk / disk.sum(), ksize=(3, 3), sigmaX=alias_blur)
        expected = np.stack([np.stack([cv2.filter2D(image[..., d] / 255., -1, kernel) for d in range(3)], axis=-1)
                             for image in x])
        expected = (np.clip(expected, 0, 1) * 255).astype(np.uint8)
        ours = corrupt(x, "defocus_blur", severity)
        assert np.abs(ours.astype(int) - expected).max() <= 1 and (ours == expected).mean() > 0.999


def test_gaussian_blur_matches_opencv(uint8_images):
    """skimage's gaussian (sigma per severity, border "nearest", kernel truncated at 4 sigma) = cv2.GaussianBlur
    with the same kernel size and BORDER_REPLICATE."""
    x = uint8_images[:8]
    for severity, sigma in zip(SEVERITIES, [.4, .6, 0.7, .8, 1]):
        size = 2 * int(4 * sigma + 0.5) + 1
        expected = np.stack([cv2.GaussianBlur(image / 255., (size, size), sigma, borderType=cv2.BORDER_REPLICATE)
                             for image in x])
        expected = (np.clip(expected, 0, 1) * 255).astype(np.uint8)
        ours = corrupt(x, "gaussian_blur", severity)
        assert np.abs(ours.astype(int) - expected).max() <= 1 and (ours == expected).mean() > 0.999


@pytest.mark.parametrize("severity", [1, 5])
def test_elastic_transform_matches_opencv_and_scipy(severity, uint8_images):
    """The official code path (cv2.getAffineTransform, cv2.warpAffine, scipy map_coordinates) with our draws."""
    alpha, sigma, affine = [(0, 0, 32 * 0.08), (32 * 0.05, 32 * 0.2, 32 * 0.07), (32 * 0.08, 32 * 0.06, 32 * 0.06),
                            (32 * 0.1, 32 * 0.04, 32 * 0.05), (32 * 0.1, 32 * 0.03, 32 * 0.03)][severity - 1]
    x = uint8_images[:6]
    ours = np.clip(C.elastic_transform(x, severity, _stream(11)), 0, 255).astype(np.uint8)
    draws = _stream(11)
    moves = next(draws).uniform(-affine, affine, size=(6, 3, 2)).astype(np.float32)
    noise_x, noise_y = next(draws).uniform(-1, 1, size=(6, 32, 32)), next(draws).uniform(-1, 1, size=(6, 32, 32))
    pts1 = np.float32([[26, 26], [26, 6], [6, 6]])
    for i, image in enumerate(x):
        warped = cv2.warpAffine(image.astype(np.float32) / 255., cv2.getAffineTransform(pts1, pts1 + moves[i]),
                                (32, 32), borderMode=cv2.BORDER_REFLECT_101)
        dx = (gaussian_filter(noise_x[i], sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
        dy = (gaussian_filter(noise_y[i], sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
        cols, rows, channels = np.meshgrid(np.arange(32), np.arange(32), np.arange(3))
        coordinates = [(rows + dy[..., None]).ravel(), (cols + dx[..., None]).ravel(), channels.ravel()]
        expected = map_coordinates(warped, coordinates, order=1, mode="reflect").reshape(32, 32, 3)
        expected = (np.clip(expected, 0, 1) * 255).astype(np.uint8)
        assert np.abs(ours[i].astype(int) - expected).max() <= 1
        assert (ours[i] == expected).mean() > 0.99
    assert _rms(ours, x) > 5  # the warp does move the image


def test_bad_inputs_raise_before_any_work(uint8_images):
    x = uint8_images[:2]
    with pytest.raises(ValueError, match="corruption must be one of .*gaussian_noise"):
        corrupt(x, "gaussian", 1)
    for severity in (0, 6, 2.0, True):
        with pytest.raises(ValueError, match=r"severity must be one of \(1, 2, 3, 4, 5\)"):
            corrupt(x, "fog", severity)
    with pytest.raises(ValueError, match="images must have dtype uint8"):
        corrupt(x.astype(np.float32) / 255, "fog", 1)
    with pytest.raises(ValueError, match=r"images must have shape \(N, 32, 32, 3\)"):
        corrupt(x.transpose(0, 3, 1, 2).copy(), "fog", 1)
    with pytest.raises(ValueError, match=r"images must have shape"):
        corrupt(x[0], "fog", 1)
    with pytest.raises(ValueError, match="images must be a numpy array"):
        corrupt(torch.from_numpy(x), "fog", 1)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        corrupt(x, "fog", 1, seed=-1)
    with pytest.raises(ValueError, match="corruption must be one of"):
        load_cifar10c("/nonexistent", "blur", 1)
    with pytest.raises(ValueError, match="n must be an integer in 1..10000"):
        generate_cifar10c("/nonexistent", "/nonexistent", n=0)


def test_generate_small_subset_and_resume(data_dir, cifar_test, tmp_path, monkeypatch):
    names = ("gaussian_noise", "brightness", "contrast")
    folder = generate_cifar10c(data_dir, str(tmp_path), corruptions=names, n=16, seed=5, progress=False)
    assert folder == os.path.join(str(tmp_path), "CIFAR-10-C-first16")  # a subset never poses as the official one
    assert not os.path.exists(tmp_path / "CIFAR-10-C")
    clean = (cifar_test[0][:16] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    labels = np.load(os.path.join(folder, "labels.npy"))
    assert labels.dtype == np.uint8 and labels.shape == (80,)  # as the official labels.npy
    np.testing.assert_array_equal(labels, np.tile(cifar_test[1][:16].numpy(), 5))
    for name in names:
        data = np.load(os.path.join(folder, name + ".npy"))
        assert data.shape == (80, 32, 32, 3) and data.dtype == np.uint8
        for severity in SEVERITIES:
            np.testing.assert_array_equal(data[(severity - 1) * 16:severity * 16], corrupt(clean, name, severity, 5))
        images, image_labels = load_cifar10c(folder, name, 4, n=10)
        assert images.shape == (10, 3, 32, 32) and images.dtype == torch.float32 and image_labels.dtype == torch.int64
        np.testing.assert_array_equal((images * 255).round().byte().permute(0, 2, 3, 1).numpy(), data[48:58])
        assert image_labels.tolist() == cifar_test[1][:10].tolist()
    manifest = json.loads((tmp_path / "CIFAR-10-C-first16" / "GENERATED.json").read_text())
    assert manifest["seed"] == 5 and manifest["n"] == 16 and manifest["corruptions"] == list(names)
    assert manifest["generator_version"] == C.GENERATOR_VERSION
    assert sorted(os.listdir(folder)) == sorted(["GENERATED.json", "labels.npy"] + [n + ".npy" for n in names])

    # a second run finds every file in place and computes nothing
    mtimes = {name: os.stat(os.path.join(folder, name + ".npy")).st_mtime_ns for name in names}
    calls = []
    original = C.corrupt

    def counting(images, corruption, severity, seed=0):
        calls.append(corruption)
        return original(images, corruption, severity, seed)

    monkeypatch.setattr(C, "corrupt", counting)
    generate_cifar10c(data_dir, str(tmp_path), corruptions=names, n=16, seed=5, progress=False)
    assert calls == []
    assert mtimes == {name: os.stat(os.path.join(folder, name + ".npy")).st_mtime_ns for name in names}
    # a killed run resumes: a missing or truncated file is computed again, and only that one
    os.remove(os.path.join(folder, "contrast.npy"))
    np.save(os.path.join(folder, "brightness.npy"), np.zeros((7, 32, 32, 3), np.uint8))
    generate_cifar10c(data_dir, str(tmp_path), corruptions=names + ("fog",), n=16, seed=5, progress=False)
    assert sorted(set(calls)) == ["brightness", "contrast", "fog"] and len(calls) == 15
    assert np.load(os.path.join(folder, "brightness.npy")).shape == (80, 32, 32, 3)
    assert json.loads((tmp_path / "CIFAR-10-C-first16" / "GENERATED.json").read_text())["corruptions"] == [
        "gaussian_noise", "fog", "brightness", "contrast"]  # in CORRUPTIONS order
    # another seed must not be mixed into this folder
    with pytest.raises(ValueError, match="seed"):
        generate_cifar10c(data_dir, str(tmp_path), corruptions=names, n=16, seed=6, progress=False)
    assert not [f for f in os.listdir(folder) if f.startswith(".tmp")]


def test_refuses_to_write_into_an_official_folder(data_dir, tmp_path):
    official = tmp_path / "CIFAR-10-C-first16"
    official.mkdir()
    np.save(official / "labels.npy", np.zeros(80, np.uint8))
    with pytest.raises(ValueError, match="did not write"):
        generate_cifar10c(data_dir, str(tmp_path), corruptions=("contrast",), n=16, progress=False)


def test_robustbench_reads_the_generated_folder(data_dir, cifar_test, tmp_path):
    from benchmarks.robustbench_compat import import_robustbench

    folder = generate_cifar10c(data_dir, str(tmp_path), corruptions=("brightness",), n=10000, progress=False)
    assert folder == os.path.join(str(tmp_path), "CIFAR-10-C")
    rb_images, rb_labels = import_robustbench().data.load_cifar10c(
        n_examples=50, severity=3, data_dir=str(tmp_path), shuffle=False, corruptions=("brightness",))
    images, labels = load_cifar10c(folder, "brightness", 3, n=50)
    assert torch.equal(rb_images, images)
    assert rb_labels.tolist() == labels.tolist() == cifar_test[1][:50].tolist()
    clean = (cifar_test[0][:50] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal((images * 255).round().byte().permute(0, 2, 3, 1).numpy(),
                                  corrupt(clean, "brightness", 3))
    assert cifar10c_folder(str(tmp_path)) == folder


def test_folder_choice_prefers_official_files(tmp_path):
    data_dir, cache_dir = tmp_path / "data", tmp_path / "cache"
    assert cifar10c_folder(str(data_dir), str(cache_dir)) is None
    for name in ("CIFAR-10-C-first100", "CIFAR-10-C-first2000", "CIFAR-10-C-first500", "CIFAR-10-C-firstx"):
        (cache_dir / name).mkdir(parents=True)
        np.save(cache_dir / name / "labels.npy", np.zeros(5, np.uint8))
    (cache_dir / "CIFAR-10-C-first800").mkdir()  # no labels.npy: not a usable folder
    assert cifar10c_folder(str(data_dir), str(cache_dir), n=100) == str(cache_dir / "CIFAR-10-C-first100")
    assert cifar10c_folder(str(data_dir), str(cache_dir), n=101) == str(cache_dir / "CIFAR-10-C-first500")
    assert cifar10c_folder(str(data_dir), str(cache_dir), n=600) == str(cache_dir / "CIFAR-10-C-first2000")
    assert cifar10c_folder(str(data_dir), str(cache_dir), n=5000) is None
    assert cifar10c_folder(str(data_dir), None, n=100) is None
    (cache_dir / "CIFAR-10-C").mkdir()
    np.save(cache_dir / "CIFAR-10-C" / "labels.npy", np.zeros(5, np.uint8))
    assert cifar10c_folder(str(data_dir), str(cache_dir), n=5000) == str(cache_dir / "CIFAR-10-C")
    (data_dir / "CIFAR-10-C").mkdir(parents=True)  # without labels.npy it does not count
    assert cifar10c_folder(str(data_dir), str(cache_dir), n=100) == str(cache_dir / "CIFAR-10-C")
    np.save(data_dir / "CIFAR-10-C" / "labels.npy", np.zeros(5, np.uint8))  # the official folder wins
    assert cifar10c_folder(str(data_dir), str(cache_dir), n=100) == str(data_dir / "CIFAR-10-C")


def test_missing_file_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"fog\.npy.*python -m benchmarks cifar10c"):
        load_cifar10c(str(tmp_path), "fog", 2)
    np.save(tmp_path / "fog.npy", np.zeros((10, 32, 32, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match=r"labels\.npy.*official CIFAR-10-C"):
        load_cifar10c(str(tmp_path), "fog", 2)
    np.save(tmp_path / "labels.npy", np.arange(10, dtype=np.uint8))
    images, labels = load_cifar10c(str(tmp_path), "fog", 2)  # 2 rows per severity
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [2, 3]
    with pytest.raises(ValueError, match="n must be an integer in 1..2"):
        load_cifar10c(str(tmp_path), "fog", 2, n=3)


def test_corruption_grid_writes_a_png(uint8_images, tmp_path):
    path = tmp_path / "grid.png"
    corruption_grid(str(path), uint8_images[5], severities=(1, 5))
    with Image.open(path) as image:
        image.load()
        width, height = image.size
    # Laid out for a README's width: two blocks of 10 columns (clean + 19 corruptions), 2 severity rows each, so
    # about half as tall as wide or more, and each 32 x 32 tile drawn at more than twice its size.
    assert width < 1400 and 0.45 * width < height < 1.1 * width
    assert width / 10 > 2.5 * 32
    assert not [f for f in os.listdir(tmp_path) if f != "grid.png"]  # written atomically, no temporary left
    # One block of 20 columns when asked: wide and flat, as the old figure was.
    corruption_grid(str(path), uint8_images[5], severities=(1, 5), columns=20)
    with Image.open(path) as image:
        wide, flat = image.size
    assert wide > 1.8 * width and flat < height / 1.5
    with pytest.raises(ValueError, match="columns"):
        corruption_grid(str(path), uint8_images[5], columns=0)


# --- the cache stores the severities evaluated, not all five ------------------------------------------------------


def counting_corrupt(monkeypatch):
    """Record (corruption, severity) of every corruption computed."""
    calls, original = [], C.corrupt

    def counting(images, corruption, severity, seed=0):
        calls.append((corruption, severity))
        return original(images, corruption, severity, seed)

    monkeypatch.setattr(C, "corrupt", counting)
    return calls


def test_an_evaluation_caches_only_its_severity_and_a_later_one_adds_its_own(data_dir, cifar_test, tiny_model,
                                                                            tmp_path, monkeypatch, capsys):
    """cifar10c-1 on 16 images generates and stores severity 1 of the 19 corruptions only; cifar10c-3 afterwards
    adds severity 3 and leaves severity 1 as it was; both equal the all-severities generation of the same seed, and
    the accuracies are those of the images read from it."""
    from benchmarks.evaluate import evaluate_model

    n, cache = 16, tmp_path / "cache"
    images, labels = cifar_test[0][:n], cifar_test[1][:n]
    # a data folder with CIFAR-10 and no official CIFAR-10-C beside it, wherever the real one is
    data = tmp_path / "data"
    data.mkdir()
    (data / "cifar-10-batches-py").symlink_to(os.path.join(os.path.abspath(data_dir), "cifar-10-batches-py"))
    folder = cache / "CIFAR-10-C-first16"
    calls = counting_corrupt(monkeypatch)

    def run(attack):
        return evaluate_model(tiny_model, images, labels, str(tmp_path / "eval"), [attack], {"label": "tiny"},
                              batch_size=16, progress=False, data_dir=str(data),
                              cache_dir=str(cache))

    first = run("cifar10c-1")
    assert "generating severity 1 of the 19 corruptions" in capsys.readouterr().out
    assert sorted(calls) == sorted((name, 1) for name in CORRUPTIONS)
    singles = sorted(f"{name}-severity1.npy" for name in CORRUPTIONS)
    assert sorted(os.listdir(folder)) == sorted(["GENERATED.json", "labels.npy"] + singles)  # no other severity
    manifest = json.loads((folder / "GENERATED.json").read_text())
    assert manifest["corruptions"] == [] and manifest["severities"] == {name: [1] for name in CORRUPTIONS}
    mtimes = {f: os.stat(folder / f).st_mtime_ns for f in singles}
    assert cifar10c_folder(str(data), str(cache), n=n, severity=1) == str(folder)
    assert cifar10c_folder(str(data), str(cache), n=8, severity=1) == str(folder)  # a prefix of it serves too
    assert cifar10c_folder(str(data), str(cache), n=n, severity=3) is None  # not read as if it held severity 3

    calls.clear()
    third = run("cifar10c-3")
    assert sorted(calls) == sorted((name, 3) for name in CORRUPTIONS)  # severity 1 is not computed again
    assert sorted(os.listdir(folder)) == sorted(
        ["GENERATED.json", "labels.npy"] + singles + [f"{name}-severity3.npy" for name in CORRUPTIONS])
    assert mtimes == {f: os.stat(folder / f).st_mtime_ns for f in singles}
    assert json.loads((folder / "GENERATED.json").read_text())["severities"] == {name: [1, 3] for name in CORRUPTIONS}
    assert not [f for f in os.listdir(folder) if ".tmp-" in f]  # atomic writes leave no temporary behind

    calls.clear()
    assert run("cifar10c-3") == third and calls == []  # saved results: nothing generated, nothing read

    monkeypatch.undo()
    full = generate_cifar10c(data_dir, str(tmp_path / "all"), n=n, progress=False)  # all five, the same seed (0)
    model = tiny_model.eval()
    for severity, results in ((1, first), (3, third)):
        for name in CORRUPTIONS:
            stored = np.load(folder / f"{name}-severity{severity}.npy")
            np.testing.assert_array_equal(stored, np.load(os.path.join(full, name + ".npy"))[(severity - 1) * n:
                                                                                           severity * n])
            x, y = load_cifar10c(str(folder), name, severity)
            x_all, y_all = load_cifar10c(full, name, severity)
            assert torch.equal(x, x_all) and torch.equal(y, y_all) and torch.equal(y, labels)
            with torch.no_grad():
                accuracy = (model(x).argmax(1) == y).float().mean().item()
            assert results["results"][f"cifar10c-{severity}/{name}"]["accuracy"] == pytest.approx(accuracy)


def test_generation_of_some_severities_then_all_reuses_what_is_stored(data_dir, tmp_path, monkeypatch):
    names, n = ("gaussian_noise", "fog"), 8
    reference = generate_cifar10c(data_dir, str(tmp_path / "reference"), corruptions=names, n=n, seed=2,
                                  progress=False)
    calls = counting_corrupt(monkeypatch)
    folder = generate_cifar10c(data_dir, str(tmp_path), corruptions=names, n=n, seed=2, progress=False,
                               severities=[3, 1, 3])
    assert sorted(calls) == [(name, s) for name in sorted(names) for s in (1, 3)]
    assert sorted(os.listdir(folder)) == sorted(["GENERATED.json", "labels.npy"] + [
        f"{name}-severity{s}.npy" for name in names for s in (1, 3)])
    assert cifar10c_folder(str(tmp_path / "none"), str(tmp_path), n=n) == folder  # any severity
    assert cifar10c_folder(str(tmp_path / "none"), str(tmp_path), n=n, severity=1) is None  # 17 corruptions missing
    with pytest.raises(FileNotFoundError, match=r"fog\.npy \(nor fog-severity2\.npy, severity 2 alone\)"):
        load_cifar10c(folder, "fog", 2)

    # all five: the stored severities are read back, only 2, 4 and 5 computed; RobustBench's layout, as a
    # generation of all five at once, and no per-severity file left
    calls.clear()
    generate_cifar10c(data_dir, str(tmp_path), corruptions=names, n=n, seed=2, progress=False)
    assert sorted(calls) == [(name, s) for name in sorted(names) for s in (2, 4, 5)]
    assert sorted(os.listdir(folder)) == sorted(["GENERATED.json", "labels.npy"] + [f"{name}.npy" for name in names])
    for name in names:
        np.testing.assert_array_equal(np.load(os.path.join(folder, name + ".npy")),
                                      np.load(os.path.join(reference, name + ".npy")))
    manifest = json.loads((tmp_path / "CIFAR-10-C-first8" / "GENERATED.json").read_text())
    assert manifest["corruptions"] == ["gaussian_noise", "fog"]
    assert manifest["severities"] == {name: list(SEVERITIES) for name in names}

    # a severity already inside a five-severity file is not generated again
    calls.clear()
    generate_cifar10c(data_dir, str(tmp_path), corruptions=names, n=n, seed=2, progress=False, severities=(4,))
    assert calls == [] and sorted(os.listdir(folder)) == sorted(
        ["GENERATED.json", "labels.npy"] + [f"{name}.npy" for name in names])


@pytest.mark.parametrize("severities", [(), (0,), (6,), "some", True, (1.0,), None])
def test_bad_severities_are_refused_naming_the_parameter(severities, tmp_path):
    with pytest.raises(ValueError, match=r"^severities must be 'all' or a non-empty list of severities from "
                                         r"\(1, 2, 3, 4, 5\)"):
        generate_cifar10c(str(tmp_path), str(tmp_path), n=8, severities=severities)
    assert not os.listdir(tmp_path)  # refused before anything is written


def test_the_cifar10c_command_generates_the_severities_asked(data_dir, tmp_path, capsys):
    from benchmarks.__main__ import main

    assert main(["cifar10c", "--data-dir", data_dir, "--out", str(tmp_path), "--n", "4", "--severities", "2",
                 "--no-progress"]) == 0
    folder = tmp_path / "CIFAR-10-C-first4"
    assert capsys.readouterr().out.strip() == str(folder)
    assert sorted(os.listdir(folder)) == sorted(["GENERATED.json", "labels.npy"] + [
        f"{name}-severity2.npy" for name in CORRUPTIONS])
    with pytest.raises(SystemExit):
        main(["cifar10c", "--data-dir", data_dir, "--out", str(tmp_path), "--severities", "6"])
    assert "invalid choice: 6" in capsys.readouterr().err


def test_an_evaluation_asked_for_all_severities_generates_the_five(data_dir, cifar_test, tiny_model, tmp_path,
                                                                     monkeypatch, capsys):
    """all_severities=True (CLI --cifar10c-all-severities): cifar10c-1 generates RobustBench's five-severity layout
    once, and a later cifar10c-4 reads it, generating nothing."""
    from benchmarks.evaluate import evaluate_model

    n, cache = 8, tmp_path / "cache"
    data = tmp_path / "data"
    data.mkdir()
    (data / "cifar-10-batches-py").symlink_to(os.path.join(os.path.abspath(data_dir), "cifar-10-batches-py"))
    calls = counting_corrupt(monkeypatch)

    def run(attack):
        return evaluate_model(tiny_model, cifar_test[0][:n], cifar_test[1][:n], str(tmp_path / "eval"), [attack],
                              {"label": "tiny"}, batch_size=8, progress=False, data_dir=str(data),
                              cache_dir=str(cache), all_severities=True)

    run("cifar10c-1")
    assert "generating the 5 severities" in capsys.readouterr().out
    assert sorted(calls) == sorted((name, s) for name in CORRUPTIONS for s in SEVERITIES)
    folder = cache / "CIFAR-10-C-first8"
    assert sorted(os.listdir(folder)) == sorted(["GENERATED.json", "labels.npy"] + [f"{c}.npy" for c in CORRUPTIONS])
    calls.clear()
    run("cifar10c-4")
    assert calls == []
