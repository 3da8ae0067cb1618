"""SavedModel export for TF Serving: layout, signatures, fresh-process equality, input checks."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import seat_tf
from seat_tf import export as export_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (28, 28, 1)  # Fashion-MNIST's shape, so the README's request fits the test model
NUM_CLASSES = 10


def small_classifier(input_shape=SHAPE, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=input_shape)
    h = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
    h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(h))


def run_python(*args, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def run_cli(*args):
    return run_python("-m", "seat_tf.cli", *args)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A SEAT model saved as .keras and exported with `seat-tf export` to <out>/1."""
    base = tmp_path_factory.mktemp("export")
    model = seat_tf.SEATModel(small_classifier(), epsilon=0.1)
    keras_path = str(base / "model.keras")
    model.save(keras_path)
    out = str(base / "serving")
    result = run_cli("export", f"--model={keras_path}", f"--out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    path = os.path.join(out, "1")
    return {"classifier": model.classifier, "keras_path": keras_path, "out": out, "path": path,
            "stdout": result.stdout, "signatures": export_lib.signature_specs(path)}


def test_cli_writes_version_1_prints_signatures_and_passes_its_check(exported):
    assert os.listdir(exported["out"]) == ["1"]  # no temporary folder left beside it
    assert {"saved_model.pb", "variables"} <= set(os.listdir(exported["path"]))
    assert export_lib.format_signatures(exported["signatures"]) in exported["stdout"]
    for name in (export_lib.FLOAT_SIGNATURE, export_lib.UINT8_SIGNATURE):
        assert re.search(rf"{name} +max \|logits - keras\| = \S+ \(<= 1e-05: OK\)", exported["stdout"])


def test_cli_refuses_a_non_empty_version(exported):
    result = run_cli("export", f"--model={exported['keras_path']}", f"--out={exported['out']}", "--version=1")
    assert result.returncode != 0 and "refusing to overwrite" in result.stderr
    assert os.listdir(exported["out"]) == ["1"]


def test_reloaded_in_a_fresh_process_it_equals_the_keras_model(exported):
    check = export_lib.check_in_fresh_process(exported["path"], exported["classifier"])
    assert check["passed"] and check["process"]["pid"] != os.getpid()
    assert check["process"]["seat_tf_imported"] is False  # serving needs only TensorFlow
    for name in (export_lib.FLOAT_SIGNATURE, export_lib.UINT8_SIGNATURE):
        assert check["signatures"][name]["max_abs_logit_diff"] <= 1e-5
        assert check["signatures"][name]["classes_agree"] == check["batch_size"]


def test_fresh_process_check_detects_a_different_model(exported):
    changed = keras.models.clone_model(exported["classifier"])
    weights = exported["classifier"].get_weights()
    weights[-1] = weights[-1] + np.arange(NUM_CLASSES, dtype=np.float32) * 1e-3  # shift the logit biases
    changed.set_weights(weights)
    with pytest.raises(ValueError, match="disagrees with the Keras model"):
        export_lib.check_in_fresh_process(exported["path"], changed)


def test_signature_names_dtypes_and_shapes(exported):
    specs = exported["signatures"]
    assert set(specs) == {"serving_default", "serving_uint8"}
    for name, input_dtype in [("serving_default", "DT_FLOAT"), ("serving_uint8", "DT_UINT8")]:
        sig = specs[name]
        assert sig["method"] == "tensorflow/serving/predict"
        assert {k: (v["dtype"], v["shape"]) for k, v in sig["inputs"].items()} == {
            "images": (input_dtype, (-1,) + SHAPE)}
        assert {k: (v["dtype"], v["shape"]) for k, v in sig["outputs"].items()} == {
            "classes": ("DT_INT64", (-1,)),
            "logits": ("DT_FLOAT", (-1, NUM_CLASSES)),
            "probabilities": ("DT_FLOAT", (-1, NUM_CLASSES)),
        }
    # The outputs are what their names say.
    loaded = tf.saved_model.load(exported["path"])
    x = np.random.default_rng(1).uniform(0, 1, (5,) + SHAPE).astype(np.float32)
    outputs = {k: v.numpy() for k, v in loaded.signatures["serving_default"](images=tf.constant(x)).items()}
    np.testing.assert_allclose(outputs["probabilities"], tf.nn.softmax(outputs["logits"]).numpy(), atol=1e-6)
    np.testing.assert_array_equal(outputs["classes"], outputs["logits"].argmax(-1))


def _saved_model_cli():
    path = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    assert os.path.exists(path), f"saved_model_cli (installed with tensorflow) not found next to {sys.executable}"
    return path


def test_saved_model_cli_shows_the_same_signatures_and_runs(exported, tmp_path):
    path = exported["path"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    shown = subprocess.run([_saved_model_cli(), "show", "--all", "--dir", path], capture_output=True, text=True,
                           timeout=300, env=env)
    assert shown.returncode == 0, shown.stderr[-2000:]
    for block in export_lib.format_signatures(exported["signatures"]).strip().split("\n\n"):
        assert block in shown.stdout  # our listing is saved_model_cli's, line for line
    pixels = str(tmp_path / "pixels.npy")
    np.save(pixels, np.full((2,) + SHAPE, 128, np.uint8))
    ran = subprocess.run([_saved_model_cli(), "run", "--dir", path, "--tag_set", "serve", "--signature_def",
                          "serving_uint8", "--inputs", f"images={pixels}"], capture_output=True, text=True,
                         timeout=300, env=env)
    assert ran.returncode == 0, ran.stderr[-2000:]
    for key in export_lib.OUTPUT_KEYS:
        assert f"Result for output key {key}:" in ran.stdout


def _readme_serving_section():
    text = open(os.path.join(ROOT, "README.md")).read()
    return re.search(r"^## Serving with TF Serving\n(.*?)(?=^## |\Z)", text, re.S | re.M).group(1)


def test_readme_rest_example_matches_the_signature(exported):
    section = _readme_serving_section()
    # The request the README builds, built the same way.
    command = re.search(r"^python -c '(.*)' > request\.json$", section, re.M).group(1)
    built = run_python("-c", command)
    assert built.returncode == 0, built.stderr
    request = json.loads(built.stdout)
    # Fed through the loaded signature as TF Serving does (row format: one entry per image).
    loaded = tf.saved_model.load(exported["path"])
    signature = loaded.signatures[request["signature_name"]]
    spec = signature.structured_input_signature[1]["images"]
    images = tf.constant(np.asarray(request["instances"]), dtype=spec.dtype)
    outputs = {k: v.numpy().tolist() for k, v in signature(images=images).items()}
    predictions = [{k: outputs[k][i] for k in outputs} for i in range(len(request["instances"]))]
    # The documented response has the same keys and shapes.
    documented = json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))
    assert len(documented["predictions"]) == len(predictions)
    for got, doc in zip(predictions, documented["predictions"]):
        assert set(got) == set(doc) == set(export_lib.OUTPUT_KEYS)
        assert isinstance(doc["classes"], int) and isinstance(got["classes"], int)
        assert len(doc["logits"]) == len(got["logits"]) == len(doc["probabilities"]) == NUM_CLASSES
        assert doc["classes"] == int(np.argmax(doc["probabilities"])) == int(np.argmax(doc["logits"]))
        assert sum(doc["probabilities"]) == pytest.approx(1.0, abs=1e-3)


def _shape_error(got):
    return rf"Shape of tensor images \[{got}\] is not compatible with expected shape \[\?,28,28,1\]"


@pytest.mark.parametrize(
    "signature, make_images, message",
    [
        ("serving_default", lambda: tf.zeros((2, 14, 14, 1)), _shape_error(r"2,14,14,1")),
        ("serving_default", lambda: tf.zeros((2, 28, 28, 3)), _shape_error(r"2,28,28,3")),
        ("serving_default", lambda: tf.zeros(SHAPE), _shape_error(r"28,28,1")),  # no batch axis
        ("serving_uint8", lambda: tf.zeros((2, 28, 28), tf.uint8), _shape_error(r"2,28,28")),  # no channel axis
        ("serving_default", lambda: tf.fill((2,) + SHAPE, 200.0), r"float32 images must lie in \[0, 1\].*serving_uint8"),
        ("serving_default", lambda: tf.fill((2,) + SHAPE, -0.5), r"float32 images must lie in \[0, 1\]"),
        ("serving_default", lambda: tf.zeros((2,) + SHAPE, tf.uint8), r"expected to be a float tensor but is a uint8"),
        ("serving_uint8", lambda: tf.zeros((2,) + SHAPE), r"expected to be a uint8 tensor but is a float"),
    ],
)
def test_wrong_shape_dtype_or_range_fails_clearly(exported, signature, make_images, message):
    loaded = tf.saved_model.load(exported["path"])
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures[signature](images=make_images())


def test_valid_inputs_at_the_range_edges_pass(exported):
    loaded = tf.saved_model.load(exported["path"])
    x = np.concatenate([np.zeros((1,) + SHAPE, np.float32), np.ones((1,) + SHAPE, np.float32)])
    served = loaded.signatures["serving_default"](images=tf.constant(x))["logits"].numpy()
    np.testing.assert_allclose(served, exported["classifier"](x).numpy(), atol=1e-5)
    pixels = (x * 255).astype(np.uint8)
    served_uint8 = loaded.signatures["serving_uint8"](images=tf.constant(pixels))["logits"].numpy()
    np.testing.assert_allclose(served_uint8, served, atol=1e-5)


def test_refuses_a_non_empty_version_unless_overwrite(tmp_path):
    classifier = small_classifier()
    out = str(tmp_path / "serving")
    export_lib.export_saved_model(classifier, out, verify=False, log=None)
    marker = os.path.join(out, "1", "marker")
    open(marker, "w").close()
    with pytest.raises(ValueError, match=r"refusing to overwrite.*--overwrite.*next free: 2"):
        export_lib.export_saved_model(classifier, out, version=1, verify=False, log=None)
    assert os.path.exists(marker)
    result = export_lib.export_saved_model(classifier, out, version=1, overwrite=True, verify=False, log=None)
    assert result["path"] == os.path.join(out, "1") and not os.path.exists(marker)
    assert os.path.exists(os.path.join(out, "1", "saved_model.pb"))
    os.makedirs(os.path.join(out, "3"))  # an empty version folder is simply filled
    assert export_lib.export_saved_model(classifier, out, version=3, verify=False, log=None)["version"] == 3
    assert export_lib.export_saved_model(classifier, out, verify=False, log=None)["version"] == 4
    assert sorted(os.listdir(out)) == ["1", "3", "4"]


def test_next_version_counts_only_numeric_folders(tmp_path):
    assert export_lib.next_version(str(tmp_path / "missing")) == 1
    for name in ["2", "7", "tmp", ".tmp-export-x"]:
        os.makedirs(tmp_path / name)
    open(tmp_path / "9", "w").close()  # a file, not a version
    assert export_lib.next_version(str(tmp_path)) == 8


def test_interrupted_write_leaves_no_version_folder(tmp_path, monkeypatch):
    def write_half_and_die(archive, path):
        open(os.path.join(path, "saved_model.pb"), "wb").write(b"\0" * 10)
        raise KeyboardInterrupt

    monkeypatch.setattr(export_lib, "_write_archive", write_half_and_die)
    out = str(tmp_path / "new_base")
    with pytest.raises(KeyboardInterrupt):
        export_lib.export_saved_model(small_classifier(), out, verify=False, log=None)
    assert not os.path.exists(out)  # it created the base folder, so it removed it again
    os.makedirs(os.path.join(out, "1", "variables"))
    with pytest.raises(KeyboardInterrupt):
        export_lib.export_saved_model(small_classifier(), out, verify=False, log=None)
    assert os.listdir(out) == ["1"]


def test_failed_verification_leaves_no_version_folder(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_lib, "check_in_fresh_process", interrupted)
    out = str(tmp_path / "serving")
    os.makedirs(out)
    with pytest.raises(KeyboardInterrupt):
        export_lib.export_saved_model(small_classifier(), out, log=None)
    assert os.listdir(out) == []


@pytest.mark.parametrize(
    "make_model, kwargs, message",
    [
        (lambda tmp: str(tmp / "model.h5"), {}, "ending in .keras"),
        (lambda tmp: str(tmp / "missing.keras"), {}, "No such model file"),
        (lambda tmp: keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)]), {}, r"\[batch, H, W, C\]"),
        (lambda tmp: object(), {}, "keras.Model"),
        (lambda tmp: small_classifier(), {"version": 0}, "positive integer"),
        (lambda tmp: small_classifier(), {"version": "2"}, "positive integer"),
    ],
)
def test_bad_export_arguments_raise(tmp_path, make_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        export_lib.export_saved_model(make_model(tmp_path), str(tmp_path / "out"), verify=False, log=None, **kwargs)
    assert not os.path.exists(tmp_path / "out")


def test_out_must_be_a_folder(tmp_path):
    out = tmp_path / "file"
    out.write_text("")
    with pytest.raises(ValueError, match="is a file"):
        export_lib.export_saved_model(small_classifier(), str(out), verify=False, log=None)


def test_keras_archives_of_every_method_load_in_a_fresh_process(tmp_path):
    """`import seat_tf` is all a new process needs to load any method's .keras archive."""
    x = np.random.default_rng(0).uniform(0, 1, (4,) + SHAPE).astype(np.float32)
    expected = {}
    for name in sorted(seat_tf.METHODS):
        model = seat_tf.get_method(name)(small_classifier(), epsilon=0.05)
        model.save(str(tmp_path / f"{name}.keras"))
        expected[name] = (type(model).__name__, model.predict(x, verbose=0))
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys, json, keras, numpy as np, seat_tf\n"
        "folder = sys.argv[1]\n"
        "x = np.load(folder + '/x.npy')\n"
        "types = {}\n"
        f"for name in {sorted(expected)!r}:\n"
        "    model = keras.models.load_model(f'{folder}/{name}.keras')\n"
        "    types[name] = type(model).__name__\n"
        "    np.save(f'{folder}/{name}.npy', model.predict(x, verbose=0))\n"
        "print(json.dumps(types))\n"
    )
    result = run_python("-c", code, str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    types = json.loads(result.stdout.strip().splitlines()[-1])
    for name, (type_name, predictions) in expected.items():
        assert types[name] == type_name
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy"), predictions, atol=1e-6)
