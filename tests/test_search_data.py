"""The offline datasets: Fashion-MNIST (Debian package), digits, ImageFolder, CIFAR-10 python format."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from search.data import FASHION_DIR, DataError, load_dataset, load_fashion_mnist


def test_digits_is_3x32x32_normalised_and_subset():
    d = load_dataset("digits", 32, subset=100, seed=1)
    assert d.train_x.shape == (100, 3, 32, 32)
    assert d.test_x.shape[1:] == (3, 32, 32) and len(d.test_y) == 200
    assert abs(float(d.train_x.mean())) < 1e-3 and abs(float(d.train_x.std()) - 1) < 1e-2
    assert d.num_classes == 10 and set(d.train_y.tolist()) <= set(range(10))
    again = load_dataset("digits", 32, subset=100, seed=1)
    assert (again.train_y == d.train_y).all()


@pytest.mark.skipif(not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_is_padded_to_32_and_three_channels():
    d = load_dataset("fashion-mnist", 32, subset=64, seed=0)
    assert d.train_x.shape == (64, 3, 32, 32)
    assert (d.train_x[:, 0] == d.train_x[:, 1]).all()
    # the 2-pixel zero padding is one constant value (the normalised 0)
    border = d.train_x[:, 0, 0, :]
    assert np.allclose(border.numpy(), border[0, 0].item())
    assert d.classes[9] == "Ankle boot"


def test_missing_fashion_mnist_names_the_package(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(32, None, 0, root=tmp_path)


def test_unknown_dataset_and_too_many_classes(tmp_path):
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet-please", 32)
    with pytest.raises(DataError, match="classes"):
        load_dataset("digits", 32, subset=10, num_classes=5)


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog", "eel"):
        (tmp_path / c).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    d = load_dataset(str(tmp_path), 32, seed=0)
    assert d.classes == ["cat", "dog", "eel"]
    assert d.train_x.shape == (12, 3, 32, 32) and len(d.test_y) == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_dataset(str(tmp_path / "empty"), 32)


def test_cifar10_python_folder(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1", 30), ("data_batch_2", 30), ("test_batch", 20)):
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, n).tolist()}, f)
    with open(tmp_path / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    d = load_dataset(str(tmp_path), 32)
    assert d.train_x.shape == (60, 3, 32, 32) and d.test_x.shape == (20, 3, 32, 32)
    assert d.classes[3] == "c3"
