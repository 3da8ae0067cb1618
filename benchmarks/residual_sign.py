"""Where SEAT's linearity residual r = l(x') - l(x) - d.g is negative, at the point its own
training attack reaches on a trained model.

With l(x) and g as fixed targets (`clean_loss_gradient=False`, no double backprop) the
weight gradient of lam |r| is lam sign(r) grad l(x'): the term weights each example's
adversarial loss by 1 + lam where r > 0 and 1 - lam where r < 0. This measures how many
examples get the smaller weight, and how much the term inside the attack changes the attack
(the same attack with attack_lam 0). Models: `model.keras` of finished SEAT workdirs.

    python -m benchmarks.residual_sign --workdirs=runs/plain_cnn/work/plain_ncg_steps3u_eps0.3_e10_s0 \\
        --out=docs/results/plain_cnn/residual_sign.json
"""

import dataclasses
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_list("workdirs", [], "Finished SEAT workdirs (config.json and model.keras).")
    flags.DEFINE_string("out", None, "JSON output file.")
    flags.DEFINE_integer("examples", 512, "First test images to use.")
    flags.DEFINE_string("data_dir", None, "Dataset folder (default: the config's).")


def residual_stats(model, x, y, epsilon, attack_lam=None):
    """Accuracy at the training attack's point, mean adversarial CE, and the residual's sign
    and size there (attack_lam: override the weight of the term inside the attack)."""
    import numpy as np
    import tensorflow as tf

    from seat_tf import losses

    saved = model.variant
    if attack_lam is not None:
        model.variant = dataclasses.replace(saved, attack_lam=attack_lam)
    try:
        x, y = tf.constant(x), tf.constant(y)
        clean = model.compute_clean_pass(x, y, tf.GradientTape())
        x_adv = model.perturb(x, y, epsilon, clean)
    finally:
        model.variant = saved
    logits = model.classify(x_adv, training=False)
    adv_loss = losses.cross_entropy(y, logits)
    residual = losses.linearity_residual(adv_loss, clean.loss, x_adv - x, clean.grad).numpy()
    return dict(accuracy=float(np.mean(np.argmax(logits.numpy(), 1) == y.numpy())),
                adv_ce=float(np.mean(adv_loss)), negative_fraction=float(np.mean(residual < 0)),
                mean_residual=float(np.mean(residual)), mean_abs_residual=float(np.mean(np.abs(residual))))


def analyse(workdir, examples, data_dir=None):
    import keras

    from seat_tf import data

    config = json.load(open(os.path.join(workdir, "config.json")))
    model = keras.models.load_model(os.path.join(workdir, "model.keras"))
    dataset = config["dataset"]
    x, y = data.first_examples(dataset["name"], "test", examples, data_dir or dataset.get("data_dir"),
                               dataset.get("source", "auto"))
    eps = config["method"]["epsilon"]
    return dict(workdir=os.path.basename(workdir.rstrip("/")), eps=eps, lam=model.lam, examples=len(y),
                as_trained=residual_stats(model, x, y, eps), attack_lam_0=residual_stats(model, x, y, eps, attack_lam=0.0))


def main(argv):
    del argv
    if not FLAGS.workdirs:
        raise app.UsageError("--workdirs names no workdir.")
    rows = []
    for workdir in FLAGS.workdirs:
        rows.append(analyse(workdir, FLAGS.examples, FLAGS.data_dir))
        print(json.dumps(rows[-1]), flush=True)
    if FLAGS.out:
        from seat_tf import fileio

        fileio.write_json_atomic(rows, FLAGS.out)


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
