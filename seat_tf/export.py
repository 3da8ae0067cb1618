"""Export a trained classifier as a SavedModel for TF Serving, and check it in a fresh process.

    import seat_tf.export
    seat_tf.export.export_saved_model("runs/x/model.keras", "exported/seat")   # -> exported/seat/1/

Only the classifier is exported (`model.classifier` of an `AdversarialModel`): attacks and
training steps are not part of the serving graph. Two signatures, each with one input
`images` [batch, H, W, C] and three outputs:

    serving_default   float32 images in [0, 1]
    serving_uint8     uint8 images, 0-255 pixels (divided by 255 inside the graph)
    outputs           logits [batch, K] float32, probabilities [batch, K] float32 (softmax),
                      classes [batch] int64 (argmax)

Both signatures check their input inside the graph (so TF Serving clients get the message
too): the shape must be [batch, H, W, C] and float images must lie in [0, 1].

The SavedModel is written to a hidden temporary folder inside the export folder, loaded in a
fresh Python process that imports only TensorFlow and compared with the Keras model, and only
then renamed to `<out>/<version>/` (TF Serving's layout; it ignores non-numeric folders). An
export that fails or is interrupted leaves no version folder behind.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf

from seat_tf import fileio

FLOAT_SIGNATURE = "serving_default"
UINT8_SIGNATURE = "serving_uint8"
INPUT_KEY = "images"
OUTPUT_KEYS = ("classes", "logits", "probabilities")
_TMP_PREFIX = ".tmp-export-"


# -- what gets exported ----------------------------------------------------------------------


def load_classifier(model, safe_mode=True):
    """The plain classifier to serve, from a `.keras` path, an `AdversarialModel` (its
    `.classifier`) or a Keras classifier. Raises ValueError if it is not images -> logits.
    A path is loaded in Keras' safe mode (no Lambda layers) unless safe_mode=False."""
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not path.endswith(".keras"):
            raise ValueError(f"Expected a Keras archive ending in .keras, got {path!r}.")
        if not os.path.isfile(path):
            raise ValueError(f"No such model file: {path!r}.")
        model = fileio.load_keras_model(path, safe_mode=safe_mode, compile=False)
    classifier = getattr(model, "classifier", model)
    if not isinstance(classifier, keras.Model):
        raise ValueError(f"Expected a keras.Model (or a seat_tf AdversarialModel), got {type(model).__name__}.")
    image_shape(classifier)
    return classifier


def image_shape(classifier):
    """(H, W, C) of a classifier with one 4-D image input and [batch, K] logits."""
    if not classifier.inputs or len(classifier.inputs) != 1 or not classifier.outputs or len(classifier.outputs) != 1:
        raise ValueError(
            "Only a classifier with one image input and one logits output can be exported "
            "(build it with keras.Input(shape=(H, W, C)))."
        )
    shape = tuple(classifier.inputs[0].shape)
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ValueError(f"The classifier's input must be images [batch, H, W, C] with known H, W, C; got {shape}.")
    out_shape = tuple(classifier.outputs[0].shape)
    if len(out_shape) != 2 or out_shape[1] is None:
        raise ValueError(f"The classifier must output logits [batch, num_classes], got shape {out_shape}.")
    return tuple(int(d) for d in shape[1:])


def _checked(images, shape, in_unit_range):
    """images, checked at run time: shape [batch, H, W, C] (a signature's declared shape is not
    enforced when it is called, by TF Serving or in Python) and, for floats, values in [0, 1]."""
    images = tf.ensure_shape(images, (None,) + shape)  # "Shape of tensor images [..] is not compatible with .."
    if not in_unit_range:
        return images
    low, high = tf.reduce_min(images), tf.reduce_max(images)
    in_range = tf.logical_and(low >= 0.0, high <= 1.0)  # also true for an empty batch (inf, -inf)
    check = tf.debugging.Assert(in_range, [
        f"float32 images must lie in [0, 1] (send 0-255 pixels as uint8 to the '{UINT8_SIGNATURE}' signature); "
        "got min", low, "max", high,
    ])
    with tf.control_dependencies([check]):
        return tf.identity(images)


def build_archive(classifier):
    """A `keras.export.ExportArchive` with the two serving signatures (see the module doc)."""
    shape = image_shape(classifier)

    def outputs(images):
        logits = tf.cast(classifier(images, training=False), tf.float32)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits), "classes": tf.argmax(logits, axis=-1)}

    def serve_float(images):
        return outputs(_checked(images, shape, in_unit_range=True))

    def serve_uint8(images):
        return outputs(tf.cast(_checked(images, shape, in_unit_range=False), tf.float32) / 255.0)

    archive = keras.export.ExportArchive()
    archive.track(classifier)
    for name, fn, dtype in [(FLOAT_SIGNATURE, serve_float, tf.float32), (UINT8_SIGNATURE, serve_uint8, tf.uint8)]:
        archive.add_endpoint(name, fn, input_signature=[tf.TensorSpec((None,) + shape, dtype, name=INPUT_KEY)])
    return archive


def _write_archive(archive, path):
    archive.write_out(path, verbose=False)


# -- TF Serving's versioned layout -----------------------------------------------------------


def next_version(out_dir):
    """One more than the largest numeric version folder in out_dir (1 if there is none)."""
    if not os.path.isdir(out_dir):
        return 1
    versions = [int(n) for n in os.listdir(out_dir) if n.isdigit() and os.path.isdir(os.path.join(out_dir, n))]
    return max(versions, default=0) + 1


def _target_dir(out_dir, version, overwrite):
    """Validates the export location and returns (version, <out>/<version>) before any work."""
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out={out_dir!r} is a file; it must be a folder (TF Serving's model base path).")
    if version is None:
        version = next_version(out_dir)
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 1:
        raise ValueError(f"version must be a positive integer (TF Serving's version folder), got {version!r}.")
    target = os.path.join(out_dir, str(int(version)))
    if os.path.exists(target) and (not os.path.isdir(target) or os.listdir(target)) and not overwrite:
        raise ValueError(
            f"{target!r} already exists and is not empty; refusing to overwrite it. Pass --overwrite "
            f"(overwrite=True) to replace it, or choose another --version (next free: {next_version(out_dir)})."
        )
    return int(version), target


def _move_into_place(tmp_dir, target):
    """Renames the finished export to its version folder (replacing an old one if allowed)."""
    if os.path.isfile(target) or (os.path.isdir(target) and os.listdir(target)):
        old = tempfile.mkdtemp(prefix=_TMP_PREFIX + "old-", dir=os.path.dirname(target))
        os.replace(target, os.path.join(old, "replaced"))
        os.replace(tmp_dir, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, target)  # rename(2) replaces an empty folder


# -- signature listing (the SignatureDef part of `saved_model_cli show --all`) -------------


def signature_specs(saved_model_dir):
    """{signature: {"inputs"|"outputs": {key: {"dtype", "shape", "name"}}, "method"}} read from
    saved_model.pb (shape: tuple with -1 for unknown sizes, None for unknown rank)."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    (meta_graph,) = [m for m in saved_model.meta_graphs if list(m.meta_info_def.tags) == ["serve"]]

    def tensors(infos):
        return {
            key: {
                "dtype": types_pb2.DataType.Name(info.dtype),
                "shape": None if info.tensor_shape.unknown_rank else tuple(d.size for d in info.tensor_shape.dim),
                "name": info.name,
            }
            for key, info in sorted(infos.items())
        }

    return {
        name: {"inputs": tensors(sig.inputs), "outputs": tensors(sig.outputs), "method": sig.method_name}
        for name, sig in sorted(meta_graph.signature_def.items())
        if not name.startswith("__")  # __saved_model_init_op
    }


def format_signatures(specs):
    """The signatures in `saved_model_cli show --all`'s words and layout."""
    lines = []
    for name, sig in specs.items():
        lines.append(f"signature_def['{name}']:")
        for kind in ("inputs", "outputs"):
            lines.append(f"  The given SavedModel SignatureDef contains the following {kind[:-1]}(s):")
            for key, info in sig[kind].items():
                shape = "unknown_rank" if info["shape"] is None else "(" + ", ".join(map(str, info["shape"])) + ")"
                lines += [f"    {kind}['{key}'] tensor_info:", f"        dtype: {info['dtype']}",
                          f"        shape: {shape}", f"        name: {info['name']}"]
        lines += [f"  Method name is: {sig['method']}", ""]
    return "\n".join(lines)


# -- verification in a fresh process -----------------------------------------------------------

# Runs in a new interpreter that imports only TensorFlow and NumPy, as a server would: it proves
# the SavedModel needs neither Keras objects in memory nor seat_tf.
_FRESH_PROCESS_CHECK = r"""
import json, os, sys
import numpy as np
import tensorflow as tf
saved_model_dir, io_dir = sys.argv[1], sys.argv[2]
batch = np.load(os.path.join(io_dir, "inputs.npz"))
loaded = tf.saved_model.load(saved_model_dir)
outputs = {}
for signature in batch.files:
    for key, value in loaded.signatures[signature](images=tf.constant(batch[signature])).items():
        outputs[signature + "." + key] = value.numpy()
np.savez(os.path.join(io_dir, "outputs.npz"), **outputs)
print(json.dumps({"pid": os.getpid(), "tensorflow": tf.__version__, "seat_tf_imported": "seat_tf" in sys.modules}))
"""


def check_in_fresh_process(saved_model_dir, classifier, atol=1e-5, images=None, batch_size=16, seed=0, timeout=600):
    """Loads the SavedModel in a new Python process and compares both signatures' logits with
    the Keras classifier on a batch: `images` (float32 [N, H, W, C] in [0, 1], e.g. test images)
    or random images plus an all-black and an all-white one; the uint8 signature gets the
    batch as 0-255 pixels. Returns a report dict; raises ValueError if max |logits diff| > atol."""
    shape = image_shape(classifier)
    if images is None:
        images = np.random.default_rng(seed).uniform(0.0, 1.0, (batch_size,) + shape).astype(np.float32)
        images[0], images[-1] = 0.0, 1.0
    images = np.asarray(images, np.float32)
    if images.shape[1:] != shape or images.min() < 0 or images.max() > 1:
        raise ValueError(f"images must be float32 [N, {', '.join(map(str, shape))}] in [0, 1], got shape "
                         f"{images.shape} with values in [{images.min():.3g}, {images.max():.3g}].")
    batch_size = len(images)
    pixels = np.round(images * 255.0).astype(np.uint8)
    inputs = {FLOAT_SIGNATURE: images, UINT8_SIGNATURE: pixels}
    keras_inputs = {FLOAT_SIGNATURE: images, UINT8_SIGNATURE: pixels.astype(np.float32) / np.float32(255.0)}

    with tempfile.TemporaryDirectory(prefix="seat_tf_export_check_") as io_dir:
        np.savez(os.path.join(io_dir, "inputs.npz"), **inputs)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
        result = subprocess.run(
            [sys.executable, "-c", _FRESH_PROCESS_CHECK, os.path.abspath(saved_model_dir), io_dir],
            capture_output=True, text=True, timeout=timeout, cwd=io_dir, env=env,
        )
        if result.returncode != 0:
            raise ValueError(f"Loading the SavedModel in a fresh process failed:\n{result.stderr[-3000:]}")
        process = json.loads(result.stdout.strip().splitlines()[-1])
        with np.load(os.path.join(io_dir, "outputs.npz")) as served:
            served = dict(served)

    report = {"batch_size": batch_size, "atol": atol, "process": process, "signatures": {}}
    for signature, x in keras_inputs.items():
        expected = np.asarray(keras.ops.convert_to_numpy(classifier(x, training=False)), np.float32)
        logits = served[f"{signature}.logits"]
        probabilities = np.exp(expected - expected.max(-1, keepdims=True))
        probabilities /= probabilities.sum(-1, keepdims=True)
        report["signatures"][signature] = {
            "max_abs_logit_diff": float(np.abs(logits - expected).max()),
            "max_abs_probability_diff": float(np.abs(served[f"{signature}.probabilities"] - probabilities).max()),
            "classes_agree": int(np.sum(served[f"{signature}.classes"] == expected.argmax(-1))),
        }
    worst = max(r["max_abs_logit_diff"] for r in report["signatures"].values())
    report["passed"] = bool(worst <= atol)
    if not report["passed"]:
        raise ValueError(f"The exported model disagrees with the Keras model: max |logits diff| = {worst:.3g} > "
                         f"{atol:g}.\n{format_check(report)}")
    return report


def format_check(report):
    """A few lines summarizing `check_in_fresh_process`'s report."""
    process = report["process"]
    lines = [f"Fresh-process check (pid {process['pid']}, TensorFlow {process['tensorflow']}, seat_tf imported: "
             f"{process['seat_tf_imported']}), {report['batch_size']} images:"]
    for name, r in report["signatures"].items():
        verdict = "OK" if r["max_abs_logit_diff"] <= report["atol"] else "FAILED"
        lines.append(f"  {name:<16} max |logits - keras| = {r['max_abs_logit_diff']:.3g} (<= {report['atol']:g}: "
                     f"{verdict}), max |probabilities diff| = {r['max_abs_probability_diff']:.3g}, "
                     f"classes agree {r['classes_agree']}/{report['batch_size']}")
    return "\n".join(lines)


# -- the whole export ------------------------------------------------------------------------


def export_saved_model(model, out_dir, version=None, overwrite=False, verify=True, atol=1e-5, log=print,
                       safe_mode=True):
    """Exports `model`'s classifier to `<out_dir>/<version>/` for TF Serving.

    Args:
      model: path to a `.keras` archive, an `AdversarialModel`, or a Keras classifier
        (images [batch, H, W, C] in [0, 1] -> logits).
      out_dir: TF Serving's model base path; created if missing.
      version: positive integer; default one more than the largest existing version.
      overwrite: replace a non-empty `<out_dir>/<version>/` (otherwise ValueError).
      verify: load the export in a fresh process and compare logits with Keras (<= atol).
      log: where progress lines and the signature listing go (None: silent).

    Returns {"path", "version", "signatures" (see `signature_specs`), "check" (or None)}.
    """
    log = log or (lambda *_: None)
    version, target = _target_dir(out_dir, version, overwrite)  # fail before any work
    classifier = load_classifier(model, safe_mode=safe_mode)
    archive = build_archive(classifier)

    created_out_dir = not os.path.isdir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=out_dir)
    try:
        fileio.make_public_dir(tmp_dir)  # mkdtemp's 0700 would hide the model from a server's user
        _write_archive(archive, tmp_dir)
        specs = signature_specs(tmp_dir)
        check = None
        if verify:
            log("Loading the export in a fresh process to compare it with the Keras model...")
            check = check_in_fresh_process(tmp_dir, classifier, atol=atol)
        _move_into_place(tmp_dir, target)
    except BaseException:  # including KeyboardInterrupt: leave nothing half-written
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if created_out_dir and not os.listdir(out_dir):
            os.rmdir(out_dir)
        raise
    log(f"Exported {classifier.name} to {target} (SavedModel, version {version}).\n")
    log(format_signatures(specs))
    if check is not None:
        log(format_check(check))
    return {"path": target, "version": version, "signatures": specs, "check": check}
