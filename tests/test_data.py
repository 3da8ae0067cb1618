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


def test_numpy_images_go_to_unit_range_like_the_pipeline():
    """The benchmarks' NumPy path scales uint8 by 1/255 and leaves floats as they are."""
    pixels = np.array([[0, 51, 255]], np.uint8)
    np.testing.assert_allclose(data.to_unit_range(pixels), [[0.0, 0.2, 1.0]], atol=1e-7)
    floats = np.array([0.25, 1.0], np.float64)
    out = data.to_unit_range(floats)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [0.25, 1.0])


def test_first_examples_are_the_splits_head_in_unit_range(idx_folder):
    images, labels = data.load_idx("fashion_mnist", "test", str(idx_folder))
    x, y = data.first_examples("fashion_mnist", "test", 7, data_dir=str(idx_folder))
    assert x.shape == (7, 28, 28, 1) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_allclose(x, images[:7] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(y, labels[:7])


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


# -- each malformed input is a clear ValueError -----------------------------------------------


def test_bad_idx_magic_is_rejected(idx_folder):
    path = str(idx_folder / "t10k-images-idx3-ubyte.gz")
    with gzip.open(path, "rb") as f:
        content = f.read()
    for magic in (b"\x00\x00\x0d\x03", b"\x01\x00\x08\x03", b"PK\x03\x04"):  # float IDX, bad prefix, a zip
        with gzip.open(path, "wb") as f:
            f.write(magic + content[4:])
        with pytest.raises(ValueError, match="not an unsigned-byte IDX file"):
            data.load_idx("fashion_mnist", "test", str(idx_folder))


def test_idx_file_cut_inside_its_header_is_rejected(idx_folder):
    path = str(idx_folder / "t10k-labels-idx1-ubyte")  # the raw (not gzipped) one
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(content[:6])
    with pytest.raises(ValueError, match="truncated"):
        data.load_idx("fashion_mnist", "test", str(idx_folder))


def test_image_and_label_counts_must_match(idx_folder):
    _write_idx(str(idx_folder / "t10k-labels-idx1-ubyte"), np.arange(19) % 10, compress=False)
    with pytest.raises(ValueError, match="20 images but 19 labels"):
        data.load_idx("fashion_mnist", "test", str(idx_folder))
    with pytest.raises(ValueError, match="20 images but 19 labels"):
        data.load_dataset("fashion_mnist", "test", data_dir=str(idx_folder))


def test_full_size_split_with_unbalanced_classes_is_rejected(idx_folder):
    """A split of the real size (10000) must hold exactly 1000 examples per class."""
    labels = np.arange(10000) % 10
    _write_idx(str(idx_folder / "t10k-images-idx3-ubyte"), np.zeros((10000, 28, 28), np.uint8), compress=False)
    os.remove(str(idx_folder / "t10k-images-idx3-ubyte.gz"))
    _write_idx(str(idx_folder / "t10k-labels-idx1-ubyte"), labels, compress=False)
    images, _ = data.load_idx("fashion_mnist", "test", str(idx_folder))  # balanced: accepted
    assert images.shape == (10000, 28, 28, 1)
    labels[0] = 1  # 999 of class 0, 1001 of class 1
    _write_idx(str(idx_folder / "t10k-labels-idx1-ubyte"), labels, compress=False)
    with pytest.raises(ValueError, match="class counts"):
        data.load_idx("fashion_mnist", "test", str(idx_folder))


def _idx_headers_only(folder, counts):
    """IDX files with only their headers (enough for the manual_dir check, nothing more)."""
    for split, (image_file, label_file) in data._IDX_FILES.items():
        with open(folder / image_file, "wb") as f:
            f.write(struct.pack(">BBBBIII", 0, 0, 8, 3, counts[split], 28, 28))
        with open(folder / label_file, "wb") as f:
            f.write(struct.pack(">BBBBI", 0, 0, 8, 1, counts[split]))


class _FakeBuilder:
    """Stands in for a TFDS builder: records the download config, never downloads."""

    def __init__(self):
        self.download_config = "not called"

    def download_and_prepare(self, download_config=None):
        self.download_config = download_config

    def as_dataset(self, split, as_supervised):
        import tensorflow as tf

        images = np.zeros((3, 28, 28, 1), np.uint8)
        return tf.data.Dataset.from_tensor_slices((images, np.arange(3)))


def test_tfds_manual_dir_is_checked_before_tfds_is_asked(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    builder = _FakeBuilder()
    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: builder)
    kwargs = dict(source="tfds", data_dir=str(tmp_path / "tfds"), batch_size=4)
    with pytest.raises(ValueError, match="not a folder"):
        data.load_dataset("fashion_mnist", "train", manual_dir=str(tmp_path / "missing"), **kwargs)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="lacks the IDX files"):
        data.load_dataset("fashion_mnist", "train", manual_dir=str(empty), **kwargs)
    partial = tmp_path / "partial"
    partial.mkdir()
    _idx_headers_only(partial, {"train": 30, "test": 20})
    with pytest.raises(ValueError, match="30 examples, but TFDS builds fashion_mnist only from the complete"):
        data.load_dataset("fashion_mnist", "train", manual_dir=str(partial), **kwargs)
    assert builder.download_config == "not called"  # every bad folder was refused before TFDS
    complete = tmp_path / "complete"
    complete.mkdir()
    _idx_headers_only(complete, {"train": 60000, "test": 10000})
    x, y = next(iter(data.load_dataset("fashion_mnist", "test", manual_dir=str(complete), **kwargs)))
    assert builder.download_config.manual_dir == str(complete)
    assert x.dtype.name == "float32" and y.dtype.name == "int32" and x.shape == (3, 28, 28, 1)


def test_repeat_makes_an_endless_reshuffled_stream_of_whole_epochs(idx_folder):
    ds = data.load_dataset("fashion_mnist", "train", batch_size=10, data_dir=str(idx_folder), repeat=True, seed=1)
    import tensorflow as tf

    assert ds.cardinality() == tf.data.INFINITE_CARDINALITY
    images, _ = data.load_idx("fashion_mnist", "train", str(idx_folder))
    batches = list(ds.take(9))  # three epochs of 30
    epochs = [np.concatenate([b[0].numpy() for b in batches[3 * e : 3 * e + 3]]) for e in range(3)]
    flat = images.reshape(30, -1) / 255.0
    for epoch in epochs:  # each epoch holds every image exactly once
        order = [int(np.argmin(np.abs(flat - image.reshape(-1)).sum(1))) for image in epoch]
        assert sorted(order) == list(range(30))
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled each epoch
    assert sum(1 for _ in data.load_dataset("fashion_mnist", "train", batch_size=10, data_dir=str(idx_folder))) == 3


def test_epoch_variable_fixes_each_epochs_order(idx_folder):
    """With an epoch variable (resumable runs), epoch e's order is a permutation that depends on
    (seed, e) only: a new epoch reshuffles, going back to an epoch gives its order again."""
    import tensorflow as tf

    epoch = tf.Variable(0, dtype=tf.int64)
    ds = data.load_dataset("fashion_mnist", "train", batch_size=30, data_dir=str(idx_folder), seed=3, epoch=epoch)
    images, labels = data.load_idx("fashion_mnist", "train", str(idx_folder))
    flat = images.reshape(30, -1) / 255.0

    def order():
        x, y = next(iter(ds))
        found = [int(np.argmin(np.abs(flat - image.reshape(-1)).sum(1))) for image in x.numpy()]
        np.testing.assert_array_equal(y.numpy(), labels[found])  # labels travel with their images
        return found

    first = order()
    assert sorted(first) == list(range(30)) and first != list(range(30))
    epoch.assign(1)
    second = order()
    assert sorted(second) == list(range(30)) and second != first
    epoch.assign(0)
    assert order() == first
