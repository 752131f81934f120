"""Offline image datasets for the search and the child training. Nothing downloads.

Every loader returns float tensors ``[N, 3, R, R]`` (R = the space's input resolution), normalised
per channel with the training split's statistics, and int64 labels:

* ``fashion-mnist``: the Debian package ``dataset-fashion-mnist`` (IDX files under
  /usr/share/datasets/fashion-mnist); 28x28 grey, zero-padded to 32 (or resized for other
  resolutions) and replicated to 3 channels because the space's stem takes 3.
* ``digits``: scikit-learn's bundled 8x8 digits, upsampled (bilinear); for quick tests. It has no
  test split, so a fixed seeded 20% is held out.
* a CIFAR-10 python-format folder (``data_batch_1..5``, ``test_batch``).
* any ImageFolder directory (``class/xxx.png``; with ``train/`` and ``val/`` or ``test/``
  sub-folders if present, otherwise a seeded 20% is held out), read with Pillow.
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FASHION_DIR = Path(os.environ.get("FBNET_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_PACKAGE = "dataset-fashion-mnist"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


class DataError(RuntimeError):
    """A dataset that is missing or unreadable (one-line message)."""


@dataclass
class Dataset:
    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def train(self) -> torch.utils.data.TensorDataset:
        return torch.utils.data.TensorDataset(self.train_x, self.train_y)

    def test(self) -> torch.utils.data.TensorDataset:
        return torch.utils.data.TensorDataset(self.test_x, self.test_y)


# ---- helpers ---------------------------------------------------------------------------------
def _subset(x: np.ndarray, y: np.ndarray, n: int | None, rng: np.random.Generator):
    if n is None or n >= len(y):
        return x, y
    idx = np.sort(rng.permutation(len(y))[:n])
    return x[idx], y[idx]


def _holdout(x: np.ndarray, y: np.ndarray, frac: float, seed: int):
    idx = np.random.default_rng(seed).permutation(len(y))
    k = int(round(len(y) * frac))
    te, tr = np.sort(idx[:k]), np.sort(idx[k:])
    return x[tr], y[tr], x[te], y[te]


def _to_tensor(images: np.ndarray, resolution: int, pad_from: int | None = None) -> torch.Tensor:
    """uint8/float images [N, H, W] or [N, H, W, 3] in 0..1 -> float [N, 3, R, R]."""
    t = torch.from_numpy(np.ascontiguousarray(images)).float()
    t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
    h = t.shape[-1]
    if h != resolution:
        if pad_from is not None and h < resolution and (resolution - h) % 2 == 0:
            p = (resolution - h) // 2
            t = F.pad(t, (p, p, p, p))
        else:
            t = F.interpolate(t, size=(resolution, resolution), mode="bilinear", align_corners=False)
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    return t.contiguous()


def _normalise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def _finish(name: str, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
            classes: list[str], resolution: int, pad: bool = False, scale: float = 255.0) -> Dataset:
    """(images, labels) of both splits -> normalised tensors at ``resolution`` (28 px images are
    zero-padded when ``pad``)."""
    (trx, tr_y), (tex, te_y) = train, test
    a = _to_tensor(trx.astype(np.float32) / scale, resolution, pad_from=28 if pad else None)
    b = _to_tensor(tex.astype(np.float32) / scale, resolution, pad_from=28 if pad else None)
    a, b = _normalise(a, b)
    return Dataset(name, a, torch.from_numpy(tr_y.astype(np.int64)), b, torch.from_numpy(te_y.astype(np.int64)),
                   classes)


# ---- the loaders -----------------------------------------------------------------------------
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


def _idx(path: Path, magic: int, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise DataError(f"{path}: not an IDX file (magic {got}, expected {magic})")
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if magic == 2051:
        n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
        return data.reshape(n, rows, cols)
    return data


def load_fashion_mnist(resolution: int, subset: int | None, seed: int, root: Path = FASHION_DIR) -> Dataset:
    files = {s: root / f"{s}.gz" for s in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    absent = [p.name for p in files.values() if not p.is_file()]
    if absent:
        raise DataError(f"Fashion-MNIST not found in {root} (missing {', '.join(absent)}): install it with "
                        f"`apt-get install {FASHION_PACKAGE}`")
    rng = np.random.default_rng(seed)
    trx, try_ = _subset(_idx(files["train-images-idx3-ubyte"], 2051, 16),
                        _idx(files["train-labels-idx1-ubyte"], 2049, 8), subset, rng)
    tex, tey = _subset(_idx(files["t10k-images-idx3-ubyte"], 2051, 16),
                       _idx(files["t10k-labels-idx1-ubyte"], 2049, 8), _test_size(subset), rng)
    return _finish("fashion-mnist", (trx, try_), (tex, tey), FASHION_CLASSES, resolution, pad=True)


def _test_size(subset: int | None) -> int | None:
    # With --subset N the test split is cut in proportion (at least 200 images), so evaluation stays cheap.
    return None if subset is None else max(200, subset // 5)


def load_digits(resolution: int, subset: int | None, seed: int) -> Dataset:
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    trx, try_, tex, tey = _holdout(d.images, d.target, 0.2, seed=0)
    rng = np.random.default_rng(seed)
    trx, try_ = _subset(trx, try_, subset, rng)
    tex, tey = _subset(tex, tey, _test_size(subset), rng)
    return _finish("digits", (trx, try_), (tex, tey), [str(i) for i in range(10)], resolution, scale=16.0)


def _is_cifar10(root: Path) -> bool:
    return (root / "data_batch_1").is_file() and (root / "test_batch").is_file()


def load_cifar10(root: Path, resolution: int, subset: int | None, seed: int) -> Dataset:
    def batch(p: Path):
        with open(p, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return x, np.asarray(d[b"labels"], dtype=np.int64)

    parts = [batch(p) for p in sorted(root.glob("data_batch_*"))]
    trx, try_ = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    tex, tey = batch(root / "test_batch")
    classes = [str(i) for i in range(10)]
    meta = root / "batches.meta"
    if meta.is_file():
        with open(meta, "rb") as f:
            classes = [c.decode() for c in pickle.load(f, encoding="bytes")[b"label_names"]]
    rng = np.random.default_rng(seed)
    trx, try_ = _subset(trx, try_, subset, rng)
    tex, tey = _subset(tex, tey, _test_size(subset), rng)
    return _finish("cifar10", (trx, try_), (tex, tey), classes, resolution)


def _scan_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    items = [(p, ci) for ci, c in enumerate(classes) for p in sorted((root / c).rglob("*"))
             if p.suffix.lower() in IMAGE_SUFFIXES]
    return classes, items


def _read_images(items: list[tuple[Path, int]], resolution: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    xs = np.empty((len(items), resolution, resolution, 3), dtype=np.uint8)
    for j, (p, _) in enumerate(items):
        try:
            with Image.open(p) as im:
                xs[j] = np.asarray(im.convert("RGB").resize((resolution, resolution), Image.BILINEAR))
        except OSError as e:
            raise DataError(f"cannot read image {p}: {e}") from None
    return xs, np.array([c for _, c in items], dtype=np.int64)


def load_image_folder(root: Path, resolution: int, subset: int | None, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        classes, tr_items = _scan_folder(root / "train")
        te_classes, te_items = _scan_folder(test_dir)
        if te_classes != classes:
            raise DataError(f"{root}: train/ and {test_dir.name}/ have different class folders")
    else:
        classes, items = _scan_folder(root)
        order = np.random.default_rng(0).permutation(len(items))
        k = int(round(len(items) * 0.2))
        te_items = [items[i] for i in sorted(order[:k])]
        tr_items = [items[i] for i in sorted(order[k:])]
    if not tr_items or not te_items:
        raise DataError(f"{root}: no images found in class sub-folders (an ImageFolder layout: {root}/<class>/*.png)")

    def pick(items, n):
        if n is None or n >= len(items):
            return items
        return [items[i] for i in sorted(rng.permutation(len(items))[:n])]

    tr_items, te_items = pick(tr_items, subset), pick(te_items, _test_size(subset))
    trx, try_ = _read_images(tr_items, resolution)
    tex, tey = _read_images(te_items, resolution)
    return _finish(root.name, (trx, try_), (tex, tey), classes, resolution)


def load_dataset(name: str, resolution: int, *, subset: int | None = None, seed: int = 0,
                 num_classes: int | None = None) -> Dataset:
    """``fashion-mnist``, ``digits``, or a path (CIFAR-10 python folder or ImageFolder)."""
    if subset is not None and subset < 1:
        raise DataError(f"--subset must be >= 1, got {subset}")
    if name == "fashion-mnist":
        ds = load_fashion_mnist(resolution, subset, seed)
    elif name == "digits":
        ds = load_digits(resolution, subset, seed)
    else:
        root = Path(name)
        if not root.is_dir():
            raise DataError(f"unknown dataset {name!r}: use fashion-mnist, digits, or a folder "
                            f"(CIFAR-10 python format or ImageFolder)")
        ds = load_cifar10(root, resolution, subset, seed) if _is_cifar10(root) else \
            load_image_folder(root, resolution, subset, seed)
    if num_classes is not None and ds.num_classes > num_classes:
        raise DataError(f"{name} has {ds.num_classes} classes but the space's classifier has {num_classes}")
    return ds


__all__ = ["DataError", "Dataset", "FASHION_PACKAGE", "load_dataset"]
