"""What travels to the GPU machine, packed here and verified there: the wheels it lacks and CIFAR-10.

One call of the machine carries at most 64 MiB: the working tree (tracked and untracked-not-ignored files) plus the
ignored paths named in ``carry``. CIFAR-10 as uint8 is 184 MB (60,000 x 3072 bytes), and no lossless image codec
comes near the factor 3 that would fit it: lossless WebP of mosaics of 1000 images, the best of those tried here
(PNG 0.70, xz 0.76 of the raw size), gives 0.545, so the 10,000 test images take about 16 MiB and every 1000
training images about 1.6 MiB. With the wheels (3.6 MiB, after dropping the 44 MB pretrained checkpoint of the
pyautoattack wheel, which only the demo and the tests use) and the tree (about 2 MiB), the first 20,000 training
images fit with some 10 MiB to spare; all 50,000 would need three calls' worth. The quick preset trains on those
20,000 (``benchmarks.presets.QUICK_N_TRAIN``).

Layout of the pack folder (``.device/``, ignored by git)::

    manifest.json               what is here, with the sha256 of every file and of every decoded array
    cifar10/train-000.webp ...  lossless WebP mosaics, 10 rows x 100 columns of 32x32 images (the last may be short)
    cifar10/train-labels.npy    uint8 labels (np.load with allow_pickle=False)
    cifar10/test-000.webp ...
    cifar10/test-labels.npy
    wheels/*.whl                installed there with pip --no-index --no-deps --target

Nothing there is unpickled: the images are decoded from WebP (Pillow, else OpenCV) and the labels read as plain
.npy; each file's sha256 is checked before it is read, and each decoded array's sha256 against the array it was
made from here, so a wrong byte, a missing part or a decoder that is not lossless stops the run with the file's name.
"""

import datetime
import hashlib
import io
import json
import os
import shutil
import subprocess
import zipfile

import numpy as np

from .. import UsageError

LIMIT_BYTES = 64 * 2**20  # one call: working tree + carried paths
PART_LIMIT_BYTES = 60 * 2**20  # one file of the pack
DEFAULT_PACK = ".device"
MANIFEST = "manifest.json"
FORMAT = 1
ROWS, COLS = 10, 100  # images per mosaic part: 1000
IMAGE_SHAPE = (3, 32, 32)
#: Files of wheels that nothing on the GPU machine reads: pyautoattack's example checkpoints (44 MB + 0.9 MB).
WHEEL_DROP = {"pyautoattack": ("pyautoattack/examples/model_test.pt", "pyautoattack/examples/tf_model.weight.h5")}
#: The wheels the machine lacks (``../shared/tools/device-wheels.sh`` fetches all but imagecorruptions).
WHEELS = ("adversarial_robustness_toolbox", "torchattacks", "grad_cam", "ttach", "pyautoattack", "robustbench",
          "geotorch", "six", "imagecorruptions")
DEVICE_COMMAND = "bash benchmarks/device_run.sh"
DEVICE_TIMEOUT_S = 600


class PackError(UsageError):
    """The pack is missing, incomplete or altered: one line naming the file."""


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def array_sha256(array):
    """sha256 of a C-contiguous array's bytes, with its dtype and shape (so a reshaped array does not match)."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------- images


def to_mosaic(images, rows=ROWS, cols=COLS):
    """uint8 (N, 3, 32, 32), N <= rows * cols -> one (rows * 32, cols * 32, 3) image, row-major, zero-padded."""
    n, c, h, w = images.shape
    if n > rows * cols:
        raise ValueError(f"at most {rows * cols} images per mosaic, got {n}")
    grid = np.zeros((rows * cols, h, w, c), dtype=np.uint8)
    grid[:n] = images.transpose(0, 2, 3, 1)
    return grid.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def from_mosaic(mosaic, count, rows=ROWS, cols=COLS, shape=IMAGE_SHAPE):
    """The inverse of :func:`to_mosaic`: the first ``count`` images, uint8 (count, 3, 32, 32)."""
    c, h, w = shape
    if mosaic.shape != (rows * h, cols * w, c) or mosaic.dtype != np.uint8:
        raise ValueError(f"mosaic must be uint8 {(rows * h, cols * w, c)}, got {mosaic.dtype} {mosaic.shape}")
    grid = mosaic.reshape(rows, h, cols, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * cols, h, w, c)
    return np.ascontiguousarray(grid[:count].transpose(0, 3, 1, 2))


def encode_webp(mosaic, method=6, quality=90):
    """Lossless WebP bytes of an RGB uint8 image (Pillow)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(mosaic, "RGB").save(buffer, "WEBP", lossless=True, quality=quality, method=method, exact=True)
    return buffer.getvalue()


def decode_webp(data):
    """RGB uint8 (H, W, 3) from WebP bytes: Pillow, else OpenCV (both are on the GPU machine)."""
    try:
        from PIL import Image, features

        if features.check("webp"):
            with Image.open(io.BytesIO(data)) as image:
                return np.asarray(image.convert("RGB"))
    except ImportError:  # no Pillow there: OpenCV decodes WebP as well, below
        pass
    import cv2

    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise ValueError("OpenCV could not decode the WebP image")
    return np.ascontiguousarray(decoded[:, :, ::-1])


# ------------------------------------------------------------------------------------------------- packing


def cifar10_uint8(data_dir, train, n):
    """The first ``n`` images of a CIFAR-10 split as uint8 (N, 3, 32, 32) and uint8 labels, read here through
    :func:`benchmarks.data.load_cifar10` (float k / 255, so rounding x * 255 gives back exactly k)."""
    from ..data import load_cifar10

    try:
        images, labels = load_cifar10(data_dir, train=train, n=n, download=False)
    except FileNotFoundError as error:
        raise UsageError(" ".join(str(error).split())) from None
    if len(images) < n:
        raise UsageError(f"CIFAR-10 {'training' if train else 'test'} split has {len(images)} images, not {n}")
    return (images.numpy() * 255).round().astype(np.uint8), labels.numpy().astype(np.uint8)


def _pack_split(name, images, labels, folder, previous, per_part, method, quality, progress):
    """Write the parts of one split (reusing parts of ``previous`` whose source images are the same)."""
    reuse = {p["raw_sha256"]: p for p in (previous or {}).get("parts", [])}
    parts = []
    for index, start in enumerate(range(0, len(images), per_part)):
        chunk = images[start:start + per_part]
        raw = array_sha256(chunk)
        file = f"{name}-{index:03d}.webp"
        path = os.path.join(folder, file)
        old = reuse.get(raw)
        if old and old["file"] == file and os.path.exists(path) and sha256_file(path) == old["sha256"]:
            parts.append(old)
            continue
        data = encode_webp(to_mosaic(chunk), method, quality)
        if not np.array_equal(from_mosaic(decode_webp(data), len(chunk)), chunk):
            raise RuntimeError(f"{file}: WebP round trip is not lossless here")
        with open(path, "wb") as f:
            f.write(data)
        parts.append({"file": file, "start": start, "count": len(chunk), "bytes": len(data),
                      "sha256": sha256_bytes(data), "raw_sha256": raw})
        if progress:
            print(f"[pack] {file}: {len(chunk)} images, {len(data) / 2**20:.2f} MiB", flush=True)
    label_file = f"{name}-labels.npy"
    np.save(os.path.join(folder, label_file), labels, allow_pickle=False)
    return {"n": len(images), "rows": ROWS, "cols": COLS, "parts": parts, "labels": label_file,
            "labels_sha256": sha256_file(os.path.join(folder, label_file)),
            "images_sha256": array_sha256(images), "labels_array_sha256": array_sha256(labels)}


def slim_wheel(source, dest, drop):
    """Copy a wheel without the files ``drop`` (their RECORD lines go too, so pip installs it as usual)."""
    drop = set(drop)
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if info.filename in drop:
                continue
            data = zin.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = [line for line in data.decode().splitlines() if line.split(",")[0] not in drop]
                data = ("\n".join(lines) + "\n").encode()
            zout.writestr(info, data)


def _pack_wheels(wheel_dir, dest):
    """Copy the wheels of ``wheel_dir`` into ``dest`` (slimmed per WHEEL_DROP); a listing with sha256."""
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    os.makedirs(dest)
    found = sorted(f for f in os.listdir(wheel_dir) if f.endswith(".whl")) if os.path.isdir(wheel_dir) else []
    listing = []
    for file in found:
        project = file.split("-")[0].lower()
        target = os.path.join(dest, file)
        if project in WHEEL_DROP:
            slim_wheel(os.path.join(wheel_dir, file), target, WHEEL_DROP[project])
        else:
            shutil.copyfile(os.path.join(wheel_dir, file), target)
        listing.append({"file": file, "bytes": os.path.getsize(target), "sha256": sha256_file(target)})
    return listing


def fetch_wheels(root, wheel_dir):
    """Fill ``wheel_dir`` through ../shared/tools/device-wheels.sh (it writes .whl/) plus imagecorruptions."""
    script = os.path.join(root, "..", "shared", "tools", "device-wheels.sh")
    if not os.path.exists(script):
        raise UsageError(f"{script}: not found; put the wheels in {wheel_dir} yourself")
    subprocess.run(["bash", script], cwd=root, check=True)
    subprocess.run(["python3", "-m", "pip", "download", "-q", "--no-deps", "-d", wheel_dir,
                    "imagecorruptions==1.1.2"], cwd=root, check=True)


def tree_bytes(root):
    """Bytes of what a call sends besides ``carry``: tracked and untracked-not-ignored files (``git ls-files``)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                                capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        return None
    total = 0
    for name in filter(None, set(listed)):
        path = os.path.join(root, name)
        if os.path.isfile(path) and not os.path.islink(path):
            total += os.path.getsize(path)
    return total


def folder_bytes(folder):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def _git(root, *args):
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def pack(data_dir, dest=DEFAULT_PACK, n_train=None, n_test=10000, wheel_dir=".whl", root=".", per_part=ROWS * COLS,
         method=6, quality=90, get_wheels=False, progress=True, limit=LIMIT_BYTES):
    """Write the pack folder ``dest``; returns the manifest. Raises UsageError when a call would carry too much."""
    from ..presets import QUICK_N_TRAIN

    n_train = QUICK_N_TRAIN if n_train is None else n_train
    if not 0 < per_part <= ROWS * COLS:
        raise ValueError(f"per_part must be in 1..{ROWS * COLS}, got {per_part}")
    if get_wheels:
        fetch_wheels(root, wheel_dir)
    folder = os.path.join(dest, "cifar10")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(dest, MANIFEST)
    previous = {}
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f).get("splits", {})
        os.remove(path)  # a half-written pack has no manifest, so it is never used
    splits = {}
    for name, train, n in (("train", True, n_train), ("test", False, n_test)):
        images, labels = cifar10_uint8(data_dir, train, n)
        splits[name] = _pack_split(name, images, labels, folder, previous.get(name), per_part, method, quality,
                                   progress)
    keep = {p["file"] for s in splits.values() for p in s["parts"]} | {s["labels"] for s in splits.values()}
    for file in os.listdir(folder):
        if file not in keep:
            os.remove(os.path.join(folder, file))
    wheels = _pack_wheels(wheel_dir, os.path.join(dest, "wheels"))
    missing = [w for w in WHEELS if not any(x["file"].lower().startswith(w + "-") for x in wheels)]
    commit, status = _git(root, "rev-parse", "--short", "HEAD"), _git(root, "status", "--porcelain")
    manifest = {
        "format": FORMAT, "dataset": "cifar10", "codec": "webp-lossless",
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": {"git_commit": commit, "git_dirty": bool(status) if status is not None else None,
                   "data_dir": os.path.abspath(data_dir)},
        "splits": splits, "wheels": wheels, "wheels_missing": missing,
    }
    big = [p["file"] for s in splits.values() for p in s["parts"] if p["bytes"] > PART_LIMIT_BYTES]
    if big:
        raise UsageError(f"parts over {PART_LIMIT_BYTES // 2**20} MiB: {big}")
    with open(path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(path + ".tmp", path)
    carried, tree = folder_bytes(dest), tree_bytes(root)
    manifest["carried_bytes"], manifest["tree_bytes"] = carried, tree
    total = carried + (tree or 0)
    if progress:
        print(summary_text(manifest, dest, total, limit))
    if total > limit:
        raise UsageError(f"a call would carry {total / 2**20:.1f} MiB (pack {carried / 2**20:.1f} MiB + working tree "
                         f"{(tree or 0) / 2**20:.1f} MiB), over the {limit / 2**20:.0f} MiB limit: pack fewer "
                         f"training images (--n-train)")
    return manifest


def summary_text(manifest, dest, total, limit):
    splits, wheels = manifest["splits"], manifest["wheels"]
    lines = [f"[pack] {dest}: CIFAR-10 train {splits['train']['n']} + test {splits['test']['n']} images in "
             f"{sum(len(s['parts']) for s in splits.values())} lossless WebP parts "
             f"({sum(p['bytes'] for s in splits.values() for p in s['parts']) / 2**20:.1f} MiB), "
             f"{len(wheels)} wheels ({sum(w['bytes'] for w in wheels) / 2**20:.1f} MiB)"]
    if manifest["wheels_missing"]:
        lines.append(f"[pack] WARNING: no wheel for {', '.join(manifest['wheels_missing'])} (run with --get-wheels, "
                     f"or ../shared/tools/device-wheels.sh and pip download imagecorruptions==1.1.2 -d .whl)")
    tree = manifest["tree_bytes"]
    lines.append(f"[pack] one call carries {total / 2**20:.1f} MiB of {limit / 2**20:.0f} MiB (pack "
                 f"{manifest['carried_bytes'] / 2**20:.1f} MiB + working tree "
                 f"{'?' if tree is None else f'{tree / 2**20:.1f}'} MiB)")
    lines += ["[pack] the device call (the `run` tool):",
              f'    run(command="{DEVICE_COMMAND}", carry=["{dest}"], timeout_s={DEVICE_TIMEOUT_S})']
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- unpacking


def read_manifest(dest):
    path = os.path.join(dest, MANIFEST)
    if not os.path.exists(path):
        raise PackError(f"{path}: no manifest; run `python -m benchmarks.device pack --data-dir DIR` here and "
                        f"carry the folder")
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT or manifest.get("codec") != "webp-lossless":
        raise PackError(f"{path}: format {manifest.get('format')!r} / codec {manifest.get('codec')!r}, expected "
                        f"{FORMAT} / webp-lossless")
    return manifest


def _checked_bytes(path, sha256):
    if not os.path.isfile(path):
        raise PackError(f"{path}: missing from the pack")
    with open(path, "rb") as f:
        data = f.read()
    if sha256_bytes(data) != sha256:
        raise PackError(f"{path}: sha256 {sha256_bytes(data)[:12]}... does not match the manifest's {sha256[:12]}...")
    return data


def assemble_split(dest, split, manifest=None):
    """(uint8 images (N, 3, 32, 32), int64 labels (N,)) of one split, every file and the arrays checked."""
    manifest = manifest or read_manifest(dest)
    if split not in manifest["splits"]:
        raise PackError(f"{os.path.join(dest, MANIFEST)}: no {split!r} split")
    entry = manifest["splits"][split]
    folder = os.path.join(dest, "cifar10")
    chunks = []
    for part in entry["parts"]:
        path = os.path.join(folder, part["file"])
        mosaic = decode_webp(_checked_bytes(path, part["sha256"]))
        chunk = from_mosaic(mosaic, part["count"], entry["rows"], entry["cols"])
        if array_sha256(chunk) != part["raw_sha256"]:
            raise PackError(f"{path}: decoded images differ from those packed (the decoder here is not lossless?)")
        chunks.append(chunk)
    images = np.concatenate(chunks) if chunks else np.zeros((0, *IMAGE_SHAPE), np.uint8)
    if len(images) != entry["n"] or array_sha256(images) != entry["images_sha256"]:
        raise PackError(f"{folder}: the {split} parts assemble to {len(images)} images that do not match the "
                        f"manifest ({entry['n']})")
    label_path = os.path.join(folder, entry["labels"])
    data = _checked_bytes(label_path, entry["labels_sha256"])
    labels = np.load(io.BytesIO(data), allow_pickle=False)
    if array_sha256(labels) != entry["labels_array_sha256"] or len(labels) != len(images):
        raise PackError(f"{label_path}: labels do not match the manifest")
    return images, labels.astype(np.int64)


def verify_wheels(dest, manifest=None):
    """Names of the manifest's wheels whose file is missing or altered (empty: all good)."""
    manifest = manifest or read_manifest(dest)
    bad = []
    for wheel in manifest["wheels"]:
        path = os.path.join(dest, "wheels", wheel["file"])
        if not os.path.isfile(path) or sha256_file(path) != wheel["sha256"]:
            bad.append(wheel["file"])
    return bad
