"""Datasets as `tf.data` pipelines of (float32 images in [0, 1], int32 labels).

Sources, chosen by `source=`:
  - "idx": the original MNIST / Fashion-MNIST IDX files (.gz or raw), e.g. Debian's
    `dataset-fashion-mnist` package at /usr/share/datasets/fashion-mnist (found automatically);
  - "cifar": a local `cifar-10-batches-py` folder (the python pickle batches);
  - "npz": a .npz file with x_train, y_train, x_test, y_test (uint8 0-255 or float 0-1);
  - "tfds": TensorFlow Datasets (mnist, fashion_mnist, cifar10, cifar100, svhn_cropped), also
    built offline from a manual_dir holding the original files;
  - "auto" (default): a local source if its files are found, else TFDS.
"""

import gzip
import os
import pickle
import struct

import numpy as np
import tensorflow as tf

# The validation layer, re-exported: seat_tf.data.check_batch etc. are the public names.
from seat_tf.validation import (  # noqa: F401
    DataError,
    check_batch,
    check_dataset_head,
    check_images,
    check_labels,
    label_checker,
    model_expectations,
)

DATASETS = {
    # name: (image shape, number of classes, test split name in TFDS)
    "mnist": ((28, 28, 1), 10, "test"),
    "fashion_mnist": ((28, 28, 1), 10, "test"),
    "cifar10": ((32, 32, 3), 10, "test"),
    "cifar100": ((32, 32, 3), 100, "test"),
    "svhn_cropped": ((32, 32, 3), 10, "test"),
}
SOURCES = ("auto", "idx", "cifar", "npz", "tfds")
SPLITS = ("train", "test")

_IDX_DIRS = {
    "fashion_mnist": ["/usr/share/datasets/fashion-mnist", "~/.keras/datasets/fashion-mnist"],
    "mnist": ["/usr/share/datasets/mnist", "~/.keras/datasets/mnist"],
}
_CIFAR_DIRS = ["~/.keras/datasets/cifar-10-batches-py", "~/tensorflow_datasets/downloads/manual/cifar-10-batches-py"]
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Known sizes of the original files, used to check a local copy is complete.
_EXPECTED_COUNTS = {"mnist": {"train": 60000, "test": 10000}, "fashion_mnist": {"train": 60000, "test": 10000}}


def dataset_info(name):
    """(image_shape, num_classes) of a known dataset; ValueError for unknown names."""
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {sorted(DATASETS)} or use source='npz'.")
    shape, classes, _ = DATASETS[name]
    return shape, classes


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose one of {SPLITS}.")


# -- IDX files (MNIST, Fashion-MNIST) ------------------------------------------------------


def _open_maybe_gz(path):
    for candidate in (path + ".gz", path):
        if os.path.exists(candidate):
            return gzip.open(candidate, "rb") if candidate.endswith(".gz") else open(candidate, "rb")
    raise FileNotFoundError(f"Neither {path}.gz nor {path} exists.")


def _read_idx_header(f, path):
    magic = f.read(4)
    if len(magic) != 4 or magic[:2] != b"\x00\x00" or magic[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic!r}).")
    header = f.read(4 * magic[3])
    if len(header) != 4 * magic[3]:
        raise ValueError(f"{path}: IDX header cut short (truncated file?).")
    return struct.unpack(">" + "I" * magic[3], header)


def read_idx(path):
    """Reads an IDX file (optionally .gz) into a uint8 array, checking its header."""
    with _open_maybe_gz(path) as f:
        dims = _read_idx_header(f, path)
        data = np.frombuffer(f.read(), dtype=np.uint8)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says shape {dims} but holds {data.size} bytes (truncated file?).")
    return data.reshape(dims)


def _find_dir(candidates, required):
    for directory in candidates:
        directory = os.path.expanduser(directory)
        if all(
            os.path.exists(os.path.join(directory, f)) or os.path.exists(os.path.join(directory, f + ".gz"))
            for f in required
        ):
            return directory
    return None


def idx_dir(name, data_dir=None):
    """The folder holding the IDX files of `name`, or None."""
    required = [f for pair in _IDX_FILES.values() for f in pair]
    candidates = [data_dir] if data_dir else _IDX_DIRS.get(name, [])
    return _find_dir(candidates, required)


def load_idx(name, split, data_dir=None):
    """(images uint8 [N, 28, 28, 1], labels int32 [N]) from the original IDX files.

    Checks what can be checked without the originals' checksums: the IDX headers, the
    image/label counts and, for the full MNIST-family splits, that every class holds
    exactly N/10 examples (true of both datasets' train and test splits).
    """
    _check_split(split)
    directory = idx_dir(name, data_dir)
    if directory is None:
        where = data_dir or ", ".join(_IDX_DIRS.get(name, []))
        hint = " (apt-get install dataset-fashion-mnist)" if name == "fashion_mnist" else ""
        raise FileNotFoundError(f"No IDX files of {name!r} found in {where}{hint}.")
    image_file, label_file = _IDX_FILES[split]
    images = read_idx(os.path.join(directory, image_file))
    labels = read_idx(os.path.join(directory, label_file)).astype(np.int32)
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{directory}: {images.shape[0]} images but {labels.shape[0]} labels in the {split} split.")
    expected = _EXPECTED_COUNTS.get(name, {}).get(split)
    if expected is not None and images.shape[0] == expected:
        counts = np.bincount(labels, minlength=10)
        if counts.shape[0] != 10 or not np.all(counts == expected // 10):
            raise ValueError(f"{directory}: class counts {counts.tolist()} are not those of {name} ({split}).")
    return images[..., None], labels


# -- cifar-10-batches-py ---------------------------------------------------------------------


def cifar_dir(data_dir=None):
    """The `cifar-10-batches-py` folder (data_dir itself or a child of it), or None."""
    required = ["data_batch_1", "test_batch"]
    candidates = [data_dir, os.path.join(data_dir, "cifar-10-batches-py")] if data_dir else _CIFAR_DIRS
    return _find_dir(candidates, required)


def load_cifar_batches(split, data_dir=None):
    """(images uint8 [N, 32, 32, 3], labels int32 [N]) from CIFAR-10's python batches."""
    _check_split(split)
    directory = cifar_dir(data_dir)
    if directory is None:
        raise FileNotFoundError(
            f"No cifar-10-batches-py folder found in {data_dir or _CIFAR_DIRS} "
            "(download cifar-10-python.tar.gz and extract it, or use source='tfds')."
        )
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for file_name in names:
        path = os.path.join(directory, file_name)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} is missing; the cifar-10-batches-py folder is incomplete.")
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"{path}: expected rows of 3072 bytes, got shape {data.shape}.")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int32))
    return np.concatenate(images), np.concatenate(labels)


# -- .npz --------------------------------------------------------------------------------------


def load_npz(path, split):
    """(images [N, H, W, C], labels int32 [N]) from x_<split>, y_<split> in a .npz file."""
    _check_split(split)
    if not path or not os.path.exists(path):
        raise FileNotFoundError(f"npz file {path!r} does not exist.")
    with np.load(path) as data:
        keys = (f"x_{split}", f"y_{split}")
        missing = [k for k in keys if k not in data]
        if missing:
            raise ValueError(f"{path} lacks {missing}; it holds {sorted(data.keys())}.")
        images, labels = data[keys[0]], data[keys[1]]
    check_labels(labels, None, f"{path} ({keys[1]})")
    labels = labels.astype(np.int32).reshape(-1)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{path}: images of shape {images.shape} do not match {labels.shape[0]} labels.")
    return images, labels


# -- TFDS ----------------------------------------------------------------------------------------


def load_tfds(name, split, data_dir=None, manual_dir=None):
    """A TFDS split as (image, label); builds offline from manual_dir if given."""
    import tensorflow_datasets as tfds

    if manual_dir:
        _check_manual_dir(name, manual_dir)
    builder = tfds.builder(name, data_dir=data_dir)
    download_config = None
    if manual_dir:
        download_config = tfds.download.DownloadConfig(manual_dir=manual_dir, register_checksums=True)
    builder.download_and_prepare(download_config=download_config)
    return builder.as_dataset(split=split, as_supervised=True)


def _check_manual_dir(name, manual_dir):
    """ValueError unless manual_dir holds what TFDS needs to build `name` offline: otherwise
    TFDS would download the files (or fail deep inside with a reshape error on partial ones).
    For the MNIST family: the four IDX files, with the full split sizes in their headers."""
    if not os.path.isdir(manual_dir):
        raise ValueError(f"manual_dir {manual_dir!r} is not a folder.")
    if name not in _EXPECTED_COUNTS:
        return
    files = [f for pair in _IDX_FILES.values() for f in pair]
    if idx_dir(name, manual_dir) is None:
        raise ValueError(f"manual_dir {manual_dir!r} lacks the IDX files of {name} ({', '.join(files)}, "
                         "optionally .gz); TFDS would download them instead.")
    for split, pair in _IDX_FILES.items():
        expected = _EXPECTED_COUNTS[name][split]
        for file_name in pair:
            path = os.path.join(manual_dir, file_name)
            with _open_maybe_gz(path) as f:
                count = _read_idx_header(f, path)[0]
            if count != expected:
                raise ValueError(f"{path}: {count} examples, but TFDS builds {name} only from the complete "
                                 f"original files ({expected} in the {split} split).")


# -- the pipeline -----------------------------------------------------------------------------------


def _to_unit_range(image):
    if image.dtype == tf.uint8:
        return tf.cast(image, tf.float32) / 255.0
    return tf.cast(image, tf.float32)


def augment_cifar(image, seed):
    """Pad 4 pixels (zeros), random crop back, random horizontal flip: the usual CIFAR recipe."""
    shape = tf.shape(image)
    padded = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
    seeds = tf.random.split(seed, 2)
    image = tf.image.stateless_random_crop(padded, shape, seed=seeds[0])
    return tf.image.stateless_random_flip_left_right(image, seed=seeds[1])


def resolve_source(name, source="auto", data_dir=None):
    """The concrete source ("idx", "cifar", "npz", "tfds") for a dataset request."""
    if source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}; choose one of {SOURCES}.")
    if name == "npz" or (name and name.endswith(".npz")):
        return "npz"
    dataset_info(name)
    if source != "auto":
        return source
    if name in _IDX_DIRS and idx_dir(name, data_dir):
        return "idx"
    if name == "cifar10" and cifar_dir(data_dir):
        return "cifar"
    return "tfds"


def load_arrays(name, split, data_dir=None, source="auto"):
    """(images, labels) NumPy arrays from a local source (idx, cifar or npz)."""
    source = resolve_source(name, source, data_dir)
    if source == "idx":
        return load_idx(name, split, data_dir)
    if source == "cifar":
        return load_cifar_batches(split, data_dir)
    if source == "npz":
        return load_npz(data_dir if name == "npz" else name, split)
    raise ValueError(f"load_arrays reads local files only; {name!r} resolves to source {source!r}.")


def to_unit_range(images):
    """NumPy images as float32 in [0, 1] (uint8 are divided by 255)."""
    images = np.asarray(images)
    return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)


def first_examples(name, split, limit, data_dir=None, source="auto"):
    """The first `limit` examples of a local split as NumPy arrays: images float32 in [0, 1]
    [N, H, W, C], labels int32 (for benchmarks and analyses that attack a fixed subset)."""
    images, labels = load_arrays(name, split, data_dir, source)
    return to_unit_range(images[:limit]), np.asarray(labels[:limit], np.int32)


def _epoch_shuffled(images, labels, seed, epoch):
    """(image, label) in a permutation that is a function of (seed, epoch.value())."""
    images, labels = tf.constant(images), tf.constant(labels)
    last = len(labels) - 1

    def position(i):
        key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch.read_value(), tf.int64)])
        return tf.random.experimental.index_shuffle(i, key, last)

    order = tf.data.Dataset.range(len(labels)).map(position)
    return order.map(lambda i: (tf.gather(images, i), tf.gather(labels, i)))


def load_dataset(
    name,
    split="train",
    batch_size=128,
    *,
    shuffle=None,
    augment=False,
    data_dir=None,
    source="auto",
    limit=None,
    seed=0,
    drop_remainder=False,
    repeat=False,
    manual_dir=None,
    num_classes=None,
    epoch=None,
):
    """A batched, prefetched `tf.data.Dataset` of (float32 images in [0, 1], int32 labels).

    Args:
      name: "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn_cropped", or a path to
        a .npz file (or "npz" with data_dir=path).
      split: "train" or "test".
      batch_size: examples per batch (the global batch under a distribution strategy).
      shuffle: shuffle each epoch; defaults to True for "train".
      augment: CIFAR-style pad-crop and flip (32x32 color data).
      data_dir: folder of the local files (or TFDS data_dir); None searches the defaults.
      source: "auto", "idx", "cifar", "npz" or "tfds" (see the module docstring).
      limit: keep only the first `limit` examples (fixed subsets for quick runs).
      seed: seed of the shuffle and augmentation.
      manual_dir: for source="tfds", build offline from the original files in this folder.
      epoch: an int64 tf.Variable holding the current epoch (experiment.run sets it at the
        start of each epoch): local files are then shuffled in an order that depends only on
        (seed, epoch), so a run resumed at epoch k sees the same order as an unbroken one.
        Without it, each pass over the pipeline reshuffles (the order of a resumed run's
        epochs then differs from an unbroken run's).
      num_classes: labels must lie in [0, num_classes) (DataError otherwise); default: the
        known dataset's number of classes, or just >= 0 for a .npz file.

    Local files are checked whole (labels integer and in range, images uint8 or floats in
    [0, 1]); TFDS labels are checked as they stream.
    """
    _check_split(split)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}.")
    source = resolve_source(name, source, data_dir)
    if num_classes is None and name in DATASETS:
        num_classes = DATASETS[name][1]
    if source == "tfds":
        tfds_split = split if split == "train" else DATASETS[name][2]
        dataset = load_tfds(name, tfds_split, data_dir=data_dir, manual_dir=manual_dir)
        if limit:
            dataset = dataset.take(limit)
        if num_classes:
            dataset = dataset.map(label_checker(num_classes, f"{name} ({split})"))
        size = None
    else:
        images, labels = load_arrays(name, split, data_dir, source)
        if limit:
            images, labels = images[:limit], labels[:limit]
        check_images(images, f"{name} ({split})", allow_uint8=True)
        check_labels(labels, num_classes, f"{name} ({split})")
        size = len(labels)
        shuffle = shuffle if shuffle is not None else split == "train"
        if shuffle and epoch is not None:
            dataset = _epoch_shuffled(images, labels, seed, epoch)
            shuffle = False
        else:
            dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle if shuffle is not None else split == "train":
        dataset = dataset.shuffle(size or 50_000, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    to_float = lambda image, label: (_to_unit_range(image), tf.cast(label, tf.int32))  # noqa: E731
    if augment:
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            lambda pair, s: (augment_cifar(_to_unit_range(pair[0]), tf.cast(s, tf.int64)), tf.cast(pair[1], tf.int32)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        dataset = dataset.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
