import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from seat_tf import data


def _write_idx(path, array, compress=True):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    opener = gzip.open if compress else open
    with opener(path + (".gz" if compress else ""), "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 20)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        image_file, label_file = data._IDX_FILES[split]
        _write_idx(str(tmp_path / image_file), images)
        _write_idx(str(tmp_path / label_file), labels, compress=(split == "train"))  # .gz and raw both work
    return tmp_path


def test_idx_files_load_into_unit_range_batches(idx_folder):
    ds = data.load_dataset("fashion_mnist", "train", batch_size=8, data_dir=str(idx_folder), shuffle=False)
    x, y = next(iter(ds))
    assert x.shape == (8, 28, 28, 1) and x.dtype.name == "float32" and y.dtype.name == "int32"
    images, labels = data.load_idx("fashion_mnist", "train", str(idx_folder))
    np.testing.assert_allclose(x.numpy(), images[:8] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(y.numpy(), labels[:8])
    assert sum(int(b[1].shape[0]) for b in ds) == 30


def test_truncated_idx_file_is_rejected(idx_folder):
    path = str(idx_folder / "t10k-images-idx3-ubyte.gz")
    with gzip.open(path, "rb") as f:
        content = f.read()
    with gzip.open(path, "wb") as f:
        f.write(content[:-100])
    with pytest.raises(ValueError, match="truncated"):
        data.load_idx("fashion_mnist", "test", str(idx_folder))


def test_missing_files_and_unknown_names_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="IDX"):
        data.load_idx("fashion_mnist", "train", str(tmp_path))
    with pytest.raises(ValueError, match="Unknown dataset"):
        data.load_dataset("imagenet_tiny", "train")
    with pytest.raises(ValueError, match="Unknown split"):
        data.load_dataset("fashion_mnist", "validation", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        data.load_dataset("cifar10", "train", source="cifar", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="npz"):
        data.load_dataset(str(tmp_path / "missing.npz"), "train")
    with pytest.raises(ValueError, match="Unknown source"):
        data.load_dataset("fashion_mnist", "train", source="web")


def _write_cifar(folder, n_per_batch=4):
    folder = folder / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, n_per_batch))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return folder


def test_cifar_batches_load_channels_last(tmp_path):
    folder = _write_cifar(tmp_path)
    images, labels = data.load_cifar_batches("train", str(tmp_path))
    assert images.shape == (20, 32, 32, 3) and labels.shape == (20,)
    with open(folder / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"][0]
    np.testing.assert_array_equal(images[0, :, :, 0], raw[:1024].reshape(32, 32))  # red plane first
    ds = data.load_dataset("cifar10", "test", batch_size=4, data_dir=str(tmp_path), augment=True)
    x, _ = next(iter(ds))
    assert x.shape == (4, 32, 32, 3) and 0.0 <= float(x.numpy().min()) and float(x.numpy().max()) <= 1.0


def test_cifar_augmentation_is_a_shifted_crop_or_flip(tmp_path):
    image = np.random.default_rng(0).uniform(size=(32, 32, 3)).astype(np.float32)
    import tensorflow as tf

    out = data.augment_cifar(tf.constant(image), tf.constant([1, 2], tf.int64)).numpy()
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    candidates = [padded[i : i + 32, j : j + 32] for i in range(9) for j in range(9)]
    candidates += [c[:, ::-1] for c in candidates]
    assert any(np.allclose(out, c) for c in candidates)


def test_npz_source_and_range_checks(tmp_path):
    path = str(tmp_path / "d.npz")
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.uniform(size=(10, 6, 6)).astype(np.float32), y_train=np.arange(10) % 3,
             x_test=rng.integers(0, 256, (5, 6, 6, 1)).astype(np.uint8), y_test=np.arange(5) % 3)
    x, y = next(iter(data.load_dataset(path, "train", batch_size=10, shuffle=False)))
    assert x.shape == (10, 6, 6, 1)
    x, _ = next(iter(data.load_dataset("npz", "test", batch_size=5, data_dir=path)))
    assert float(x.numpy().max()) <= 1.0
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, x_train=rng.uniform(0, 255, (4, 6, 6, 1)).astype(np.float32), y_train=np.arange(4))
    with pytest.raises(ValueError, match="float in \\[0, 1\\]"):
        data.load_dataset(bad, "train")
    with pytest.raises(ValueError, match="lacks"):
        data.load_dataset(bad, "test")


def test_limit_and_repeat(idx_folder):
    ds = data.load_dataset("fashion_mnist", "test", batch_size=4, data_dir=str(idx_folder), limit=10)
    assert sum(int(b[1].shape[0]) for b in ds) == 10
    with pytest.raises(ValueError, match="limit"):
        data.load_dataset("fashion_mnist", "test", data_dir=str(idx_folder), limit=0)


REAL = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isdir(REAL), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_is_complete_and_balanced():
    """The real files: 60k/10k images, 6000/1000 per class (load_idx checks the balance)."""
    train_x, train_y = data.load_idx("fashion_mnist", "train")
    test_x, test_y = data.load_idx("fashion_mnist", "test")
    assert train_x.shape == (60000, 28, 28, 1) and test_x.shape == (10000, 28, 28, 1)
    assert np.all(np.bincount(train_y) == 6000) and np.all(np.bincount(test_y) == 1000)
    assert data.resolve_source("fashion_mnist") == "idx"
