"""How strong is each method's *training* adversary on a trained model? (issue 14: where does
SEAT's robustness go?)

Loads a trained model (a `seat-tf train` workdir's model.keras), wraps its classifier in each
method's training step and lets that step's own `perturb` attack the first N test images,
exactly as in training (BatchNorm in the attack's mode, the method's start and step). Per
adversary: accuracy and mean cross-entropy at the perturbed images (inference mode), the mean
|delta| / eps and the share of pixels moved by the full radius. A model trained against an
adversary that leaves it far more accurate than PGD-10 does has learned to resist a weaker
attack than the one it is evaluated with.

    python -m benchmarks.adversary_strength --model=runs/budget/work/seat_eps0.2_s0_e5/model.keras \
        --eps=0.2 --out=docs/results/budget/adversary_strength_seat.json
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS

# Training adversaries (method settings as in configs/fashion_mnist_budget.py), weakest start first.
ADVERSARIES = {
    "seat (corner start, step eps)": dict(name="seat"),
    "seat, step 1.5 eps": dict(name="seat", rel_step_size=1.5),
    "seat, step 2 eps": dict(name="seat", rel_step_size=2.0),
    "seat, 2 steps of eps": dict(name="seat", attack_steps=2),
    "fgsm_at (zero start, step eps)": dict(name="fgsm_at", rel_step_size=1.0),
    "rs_fgsm (uniform start, step 1.25 eps)": dict(name="rs_fgsm", rel_step_size=1.25),
    "n_fgsm (noise 2 eps, step eps, no projection)": dict(name="n_fgsm", noise_factor=2.0, rel_step_size=1.0),
    "pgd_at (10 steps of eps/4)": dict(name="pgd_at", steps=10, rel_step_size=0.25),
}


def define_flags():
    flags.DEFINE_string("model", None, "A trained model (.keras) whose classifier is attacked.")
    flags.DEFINE_float("eps", 0.2, "L-inf radius.")
    flags.DEFINE_integer("limit", 1000, "First N test images.")
    flags.DEFINE_string("dataset", "fashion_mnist", "Dataset (name or .npz path).")
    flags.DEFINE_string("out", "runs/adversary_strength.json", "JSON output (a .md table is written beside it).")


def measure(classifier, x, y, eps, method, batch_size=250):
    """Statistics of `method`'s training perturbation of (x, y) on `classifier` (weights unchanged)."""
    import ml_collections
    import numpy as np
    import tensorflow as tf

    from seat_tf import experiment, losses

    constructor, kwargs = experiment.method_constructor(ml_collections.ConfigDict(dict(method=dict(method))))
    model = constructor(classifier, epsilon=eps, **kwargs)
    model.compile(optimizer="sgd")
    saved = classifier.get_weights()  # the clean pass runs BatchNorm in training mode: keep its statistics
    correct, ce, moved, full = [], [], [], []
    try:
        for start in range(0, len(x), batch_size):
            xb, yb = tf.constant(x[start:start + batch_size]), tf.constant(y[start:start + batch_size])
            clean = model.compute_clean_pass(xb, yb, tf.GradientTape()) if model.clean_pass else None
            x_adv = model.perturb(xb, yb, tf.constant(eps, tf.float32), clean)
            logits = classifier(x_adv, training=False)
            correct.append((np.argmax(logits, -1) == yb.numpy()))
            ce.append(losses.cross_entropy(yb, logits).numpy())
            delta = np.abs((x_adv - xb).numpy()).reshape(len(xb), -1)
            moved.append(delta.mean(-1) / eps)
            full.append((delta >= eps * 0.999).mean(-1))
    finally:
        classifier.set_weights(saved)
    cat = np.concatenate
    return dict(accuracy=float(cat(correct).mean()), cross_entropy=float(cat(ce).mean()),
                mean_abs_delta_over_eps=float(cat(moved).mean()), full_radius_share=float(cat(full).mean()))


def markdown(result):
    lines = [f"Training adversaries on `{result['model']}` (eps {result['eps']:g}, first {result['examples']} test "
             f"images; clean accuracy {result['clean_accuracy']:.3f})", "",
             "| adversary | accuracy | cross-entropy | mean abs(delta) / eps | pixels at full radius |",
             "|---|---|---|---|---|"]
    for name, row in result["adversaries"].items():
        lines.append(f"| {name} | {row['accuracy']:.3f} | {row['cross_entropy']:.3f} | "
                     f"{row['mean_abs_delta_over_eps']:.2f} | {row['full_radius_share']:.2f} |")
    return "\n".join(lines) + "\n"


def run(model_path, eps, limit, dataset, out, adversaries=None):
    import keras
    import numpy as np

    from seat_tf import data, fileio, validation

    validation.check_eps(eps, positive=True)
    model = keras.models.load_model(model_path)
    classifier = getattr(model, "classifier", model)
    x, y = data.first_examples(dataset, "test", limit)
    clean = float((np.argmax(classifier.predict(x, verbose=0), -1) == y).mean())
    result = dict(model=model_path, eps=eps, examples=len(x), clean_accuracy=clean, adversaries={})
    for name, method in (adversaries or ADVERSARIES).items():
        result["adversaries"][name] = measure(classifier, x, y, eps, method)
        print(f"{name}: {result['adversaries'][name]}", flush=True)
    fileio.write_json_atomic(result, out)
    fileio.write_text_atomic(markdown(result), os.path.splitext(out)[0] + ".md")
    return result


def main(argv):
    del argv
    if not FLAGS.model:
        raise app.UsageError("--model is required.")
    print(markdown(run(FLAGS.model, FLAGS.eps, FLAGS.limit, FLAGS.dataset, FLAGS.out)))


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
