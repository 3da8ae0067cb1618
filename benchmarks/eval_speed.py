"""Evaluation-speed benchmark (issue 17): how close seat-tf's attacks run to the hardware's
floor, and how they compare with ART's TensorFlow 2 implementation on the same model, images
and machine.

    python -m benchmarks.eval_speed --out=docs/results/eval_speed/eval_speed.json --readme=README.md
    python -m benchmarks.eval_speed --model=runs/x/model.keras --attacks=pgd20,apgd-ce --square_limit=0
    python -m benchmarks.eval_speed --out=... --report_only --readme=README.md

What it measures, in one process (interleaved, so load from other jobs hits every row alike):
- the floor: forward and forward+backward (input gradient of the cross-entropy) throughput of
  the classifier in images/s, at the benchmark's batch size, inside `tf.function`;
- per gradient attack (PGD-k, APGD-CE-k) through the evaluation `Runner` on the first --limit
  test images: the first call (tracing included) and the best of --repeats warm calls, the
  number of traces of the attack's function (one per attack and input shape is the target:
  the Runner's batches of correctly classified images differ in size), and the ratio to the
  floor, k forward+backward passes + 1 forward per attacked image plus the clean forward pass
  over all images;
- the same attacks with ART's TensorFlowV2Classifier (ProjectedGradientDescent,
  AutoProjectedGradientDescent with the CE loss) on the same clean-correct images, same batch
  size; ART is an optional extra (`pip install "seat-tf[bench]"`): without it the ART
  columns say "not installed" and the rest is measured;
- Square (--square_queries queries on the clean-correct images among the first
  --square_limit): its time and, where the attack reports the queries it spent per example,
  the floor of one forward pass per query on examples still correctly classified.

The classifier is the small CNN built the way the configs build it (configs/fashion_mnist_seat.py,
eps 0.1), trained with SEAT for --train_steps steps so that robust accuracy, and with it the
early exits, is realistic; or loaded from --model. The trained one is saved next to --out.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
CONFIG = "configs/fashion_mnist_seat.py"
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]
README_SECTION = "eval-speed-table"


def define_flags():
    """Flags, defined only when run as a script (importing the module for tests adds none)."""
    flags.DEFINE_string("out", "runs/eval_speed/eval_speed.json", "JSON output path.")
    flags.DEFINE_string("model", None, "A saved Keras classifier (.keras); default: train one (--train_steps).")
    flags.DEFINE_integer("train_steps", 300, "SEAT training steps (batch 128) of the classifier when --model is unset.")
    flags.DEFINE_string("dataset", "fashion_mnist", "Dataset name or .npz path (tests: a tiny .npz).")
    flags.DEFINE_integer("limit", 1000, "Test images for the gradient attacks.")
    flags.DEFINE_integer("batch_size", 500, "Batch size of the evaluation, the floor and ART.")
    flags.DEFINE_float("eps", 0.1, "L-inf radius.")
    flags.DEFINE_list("attacks", ["pgd20", "apgd-ce"], "Gradient attacks (PGD-k or APGD-CE-k names).")
    flags.DEFINE_integer("repeats", 2, "Warm calls per attack (the best is kept).")
    flags.DEFINE_integer("square_limit", 500, "Test images for Square (0: skip Square).")
    flags.DEFINE_integer("square_queries", 5000, "Square's queries.")
    flags.DEFINE_boolean("art", True, "Also time ART's implementations (if installed).")
    flags.DEFINE_integer("art_rounds", None, "Rounds with ART (default: all; ART traces nothing, so 1 saves time).")
    flags.DEFINE_string("baseline_from", None, "Another seat-tf checkout whose attacks to time too (before/after).")
    flags.DEFINE_integer("seed", 0, "Seed of the attacks and the training.")
    flags.DEFINE_enum("clock", "wall", sorted(CLOCKS),
                      "wall: elapsed seconds; cpu: this process's CPU seconds (all threads), steadier on a "
                      "machine shared with other jobs.")
    flags.DEFINE_boolean("report_only", False, "Only rebuild the README table from --out.")
    flags.DEFINE_string("readme", None, "Also rewrite this README's section between the eval-speed-table markers.")


# -- model and data -------------------------------------------------------------------------


def build_classifier(model_path, train_steps, dataset, seed, save_to=None):
    """The small CNN of configs/fashion_mnist_seat.py: loaded from `model_path`, or trained
    with SEAT for `train_steps` steps (then saved to `save_to`)."""
    import keras

    from benchmarks import runner
    from seat_tf import data, experiment

    if model_path:
        return keras.models.load_model(model_path, compile=False)
    config = runner.load_config(CONFIG)
    config.seed = seed
    config.optimizer.schedule = "constant"
    model = experiment.build_model(config, total_steps=max(train_steps, 1))
    train = data.load_dataset(dataset, "train", 128, seed=seed).repeat()
    model.fit(train, steps_per_epoch=max(train_steps, 1), epochs=1, verbose=0)
    if save_to:
        model.classifier.save(save_to)
    return model.classifier


def batches(x, y, batch_size):
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)]


# -- the floor ------------------------------------------------------------------------------


class Floor:
    """Forward and forward+backward throughput (images/s) of a classifier at a batch size."""

    def __init__(self, classifier, x, y, batch_size):
        import tensorflow as tf

        from seat_tf import losses, precision

        model_fn = precision.logits_fn(classifier)
        ce = losses.get("ce")
        spec = [tf.TensorSpec([None] + list(x.shape[1:]), tf.float32), tf.TensorSpec([None], tf.int32)]

        @tf.function(input_signature=spec[:1])
        def forward(images):
            return model_fn(images)

        @tf.function(input_signature=spec)
        def forward_backward(images, labels):
            with tf.GradientTape() as tape:
                tape.watch(images)
                loss = tf.reduce_sum(ce(labels, model_fn(images)))
            return tape.gradient(loss, images)

        self.passes = {"forward": lambda b: forward(b[0]), "forward_backward": lambda b: forward_backward(*b)}
        self.data = [(tf.constant(bx), tf.constant(by)) for bx, by in batches(x, y, batch_size)]
        self.images = len(y)
        for run in self.passes.values():  # trace and warm up
            run(self.data[0]).numpy()

    def measure(self, repeats=2):
        """{"forward": images/s, "forward_backward": images/s}, best of `repeats` passes."""
        rates = {}
        for name, run in self.passes.items():
            best = float("inf")
            for _ in range(repeats):
                start = clock()
                for batch in self.data:
                    run(batch).numpy()
                best = min(best, clock() - start)
            rates[name] = self.images / best
        return rates


def iterations(attack):
    """Forward+backward passes per image of a gradient attack (steps x restarts)."""
    return attack.steps * attack.restarts


def gradient_floor_seconds(rates, attacked, total, passes):
    """Seconds of `passes` forward+backward passes and one final forward per attacked image,
    plus (if `total`) the clean forward pass over all `total` images."""
    return attacked * (passes / rates["forward_backward"] + 1.0 / rates["forward"]) + total / rates["forward"]


# -- seat-tf --------------------------------------------------------------------------------


class Traced:
    """An attack that counts how often it is traced (a Python side effect runs only while
    tf.function traces), so retracing per batch or per eps shows as a count above one."""

    def __init__(self, attack):
        self.attack, self.name, self.traces = attack, getattr(attack, "name", None), 0

    def __call__(self, *args, **kwargs):
        self.traces += 1
        return self.attack(*args, **kwargs)


def seat_run(runner, attack, x, y, batch_size, eps):
    """Runs `attack` (a Traced) over (x, y) with the evaluation Runner: (seconds, robust accuracy, attacked)."""
    import numpy as np
    import tensorflow as tf

    from seat_tf.evaluation.runner import Entry

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    entry = Entry(attack.name, attack, eps)
    start = clock()
    clean = runner.run(dataset, [entry])
    seconds = clock() - start
    return seconds, float(np.mean(np.concatenate(entry.correct))), int(clean.sum())


def square_run(classifier, attack, x, y, batch_size, eps, seed):
    """Square on the clean-correct images of each batch, as the Runner would run it:
    (seconds, robust accuracy over the images, queries spent in total or None)."""
    import numpy as np
    import tensorflow as tf

    from seat_tf import precision

    model_fn = precision.logits_fn(classifier)
    spec = [tf.TensorSpec([None] + list(x.shape[1:]), tf.float32), tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([2], tf.int32)]
    counts = hasattr(attack, "run")

    @tf.function(input_signature=spec)
    def run(images, labels, batch_seed):
        if counts:
            x_adv, queries = attack.run(model_fn, images, labels, eps, seed=batch_seed)
        else:
            x_adv, queries = attack(model_fn, images, labels, eps, seed=batch_seed), tf.zeros_like(labels)
        correct = tf.argmax(model_fn(x_adv), axis=-1, output_type=tf.int32) == labels
        return correct, queries

    start = clock()
    robust, queries = 0, 0
    for index, (bx, by) in enumerate(batches(x, y, batch_size)):
        clean = np.argmax(model_fn(bx).numpy(), axis=-1) == by
        if clean.any():
            correct, spent = run(bx[clean], by[clean], tf.constant([seed, index], tf.int32))
            robust += int(correct.numpy().sum())
            queries += int(spent.numpy().sum())
    seconds = clock() - start
    return seconds, robust / len(y), (queries if counts else None)


# -- ART ------------------------------------------------------------------------------------


def art_available():
    try:
        import art  # noqa: F401
    except ImportError:
        return False
    return True


def art_attack(classifier, attack, eps, batch_size):
    """ART's counterpart of a seat-tf PGD or APGD-CE configuration (same steps, step rule
    start, restarts), on a TensorFlowV2Classifier of the same Keras model."""
    import numpy as np
    import tensorflow as tf
    from art.attacks.evasion import AutoProjectedGradientDescent, ProjectedGradientDescent
    from art.estimators.classification import TensorFlowV2Classifier

    estimator = TensorFlowV2Classifier(
        classifier, nb_classes=int(classifier.outputs[0].shape[-1]), input_shape=tuple(classifier.inputs[0].shape[1:]),
        loss_object=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), clip_values=(0.0, 1.0))
    if type(attack).__name__ == "APGD":
        return AutoProjectedGradientDescent(estimator, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=attack.steps,
                                            nb_random_init=attack.restarts, batch_size=batch_size,
                                            loss_type="cross_entropy", verbose=False)
    return ProjectedGradientDescent(estimator, norm=np.inf, eps=eps, eps_step=attack.step_for(eps),
                                    max_iter=attack.steps, num_random_init=attack.restarts, batch_size=batch_size,
                                    verbose=False)


def art_run(classifier, attack, x, y, batch_size, eps):
    """(seconds, robust accuracy on (x, y)) of ART's attack, built afresh (first call) each time."""
    import numpy as np

    start = clock()
    x_adv = art_attack(classifier, attack, eps, batch_size).generate(x=x, y=y)
    seconds = clock() - start
    predictions = np.argmax(classifier.predict(x_adv, batch_size=batch_size, verbose=0), axis=-1)
    return seconds, float(np.mean(predictions == y))


# -- a baseline checkout ---------------------------------------------------------------------


def load_baseline(folder):
    """The attacks of another seat-tf checkout (its seat_tf/attacks/engine.py and suite.py),
    loaded beside this one so that before/after timings come from one interleaved run."""
    import importlib.util

    def load(name, path):
        spec = importlib.util.spec_from_file_location(name, os.path.join(folder, "seat_tf", "attacks", path))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    engine, suite = load("baseline_engine", "engine.py"), load("baseline_suite", "suite.py")
    suite.engine = engine  # the baseline's APGD runs on the baseline's engine
    return {"LinfPGD": engine.LinfPGD, "APGD": suite.APGD, "Square": suite.Square}


def baseline_attack(classes, attack):
    """The baseline's attack with the same configuration as `attack`."""
    import dataclasses

    return classes[type(attack).__name__](**dataclasses.asdict(attack))


# -- the benchmark --------------------------------------------------------------------------


def bracketed(floor, run):
    """run() between two floor measurements: (its result, the mean floor rates around it)."""
    before = floor.measure()
    result = run()
    after = floor.measure()
    return result, {k: 2.0 / (1.0 / before[k] + 1.0 / after[k]) for k in before}


def summarize(rounds, label):
    """First call and best warm call of one implementation from its rounds."""
    mine = [r[label] for r in rounds if label in r]
    # ART builds its classifier and attack afresh on every call (nothing to warm up), so one
    # round of it (--art_rounds=1) stands for both columns.
    warm = mine[1:] or mine
    best = lambda key: min(r[key] for r in warm)  # noqa: E731
    return dict(first=dict(seconds=mine[0]["seconds"], vs_floor=mine[0]["vs_floor"]),
                warm=dict(seconds=best("seconds"), vs_floor=best("vs_floor")),
                robust=mine[0]["robust"], traces=mine[-1].get("traces"))


def measure_gradient_attack(name, classifier, floor, x, y, batch_size, eps, seed, repeats, art_rounds, baseline):
    """One gradient attack: seat-tf, the baseline checkout's (if any) and ART's (if art_rounds)
    interleaved, each between two floor measurements; first calls, then `repeats` warm rounds."""
    import numpy as np

    from seat_tf import attacks
    from seat_tf.evaluation.runner import Runner

    attack = attacks.get_attack(name)
    seat = {"seat-tf": (Traced(attack), Runner(classifier, seed))}
    if baseline:
        seat["baseline"] = (Traced(baseline_attack(baseline, attack)), Runner(classifier, seed))
    clean = np.argmax(classifier.predict(x, batch_size=batch_size, verbose=0), axis=-1) == y
    x_art, y_art = x[clean], y[clean]
    passes = iterations(attack)
    rounds = []
    for round_index in range(repeats + 1):
        row = {}
        for label, (traced, runner) in seat.items():
            (seconds, robust, attacked), rates = bracketed(
                floor, lambda: seat_run(runner, traced, x, y, batch_size, eps))
            floor_seconds = gradient_floor_seconds(rates, attacked, len(y), passes)
            row[label] = dict(seconds=seconds, robust=robust, floor_seconds=floor_seconds, rates=rates,
                              vs_floor=seconds / floor_seconds, traces=traced.traces)
        if round_index < art_rounds:
            (seconds, robust), rates = bracketed(
                floor, lambda: art_run(classifier, attack, x_art, y_art, batch_size, eps))
            floor_seconds = gradient_floor_seconds(rates, len(y_art), 0, passes)
            row["art"] = dict(seconds=seconds, robust=robust * len(y_art) / len(y), floor_seconds=floor_seconds,
                              rates=rates, vs_floor=seconds / floor_seconds)
        rounds.append(row)
        print(f"[eval_speed] {name} round {round_index}: {json.dumps(row)}", flush=True)
    labels = [label for label in ("seat-tf", "baseline", "art") if label in rounds[0]]
    return dict(attack=name, passes_per_image=passes, images=len(y), attacked=int(clean.sum()),
                implementations={label: summarize(rounds, label) for label in labels}, rounds=rounds)


def measure_square(classifier, floor, x, y, batch_size, eps, seed, queries, baseline):
    """Square, seat-tf and the baseline's (if any); the floor is one forward pass per query on
    examples still correct, counted by seat-tf's Square (the same seed spends the same queries)."""
    from seat_tf import attacks

    attack = attacks.get_attack(f"square{queries}")
    variants = {"seat-tf": attack}
    if baseline:
        variants["baseline"] = baseline_attack(baseline, attack)
    result = dict(attack=f"square{queries}", images=len(y), implementations={})
    for label, variant in variants.items():
        (seconds, robust, spent), rates = bracketed(
            floor, lambda: square_run(classifier, variant, x, y, batch_size, eps, seed))
        result["implementations"][label] = dict(seconds=seconds, robust=robust, queries_spent=spent, rates=rates)
        print(f"[eval_speed] square {label}: {json.dumps(result['implementations'][label])}", flush=True)
    spent = result["implementations"]["seat-tf"]["queries_spent"]
    result["queries_spent"] = spent
    for row in result["implementations"].values():
        row["floor_seconds"] = spent / row["rates"]["forward"]
        row["vs_floor"] = row["seconds"] / row["floor_seconds"]
    return result


def _fmt(value, spec=".2f"):
    return "-" if value is None else format(value, spec)


def markdown(result):
    """The README table of a result: one row per attack and implementation."""
    art = result.get("art_version")
    trained = f"SEAT, {result['train_steps']} steps" if result["train_steps"] else "loaded from --model"
    seconds = "CPU seconds of the process" if result.get("clock") == "cpu" else "elapsed"
    names = {"seat-tf": "seat-tf", "baseline": "seat-tf before (--baseline_from)", "art": f"ART {art}"}
    lines = [
        f"Small CNN ({trained}) on the first {result['images']} Fashion-MNIST test images, eps {result['eps']:g}, "
        f"batch {result['batch_size']}; floor: forward {result['floor_rates']['forward']:.0f} and forward+backward "
        f"{result['floor_rates']['forward_backward']:.0f} images/s"
        + ("" if art else "; ART not installed") + f". Seconds ({seconds}) are on a shared 2-core machine: the "
        "ratios, each measured in the same run, are the claim.",
        "",
        "| attack | implementation | robust acc. | traces | first call s | x floor | warm s | x floor | "
        "time / seat-tf's (first / warm) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["attacks"]:
        impls = row["implementations"]
        ours = impls["seat-tf"]
        for label, impl in impls.items():
            first, warm = impl["first"], impl["warm"]
            over = [a["seconds"] / b["seconds"] if a["seconds"] and b["seconds"] else None
                    for a, b in ((first, ours["first"]), (warm, ours["warm"]))]
            lines.append(
                f"| {row['attack']} | {names[label]} | {impl['robust']:.3f} | {_fmt(impl['traces'], 'd')} | "
                f"{_fmt(first['seconds'], '.1f')} | {_fmt(first['vs_floor'])} | {_fmt(warm['seconds'], '.1f')} | "
                f"{_fmt(warm['vs_floor'])} | {_fmt(over[0])} / {_fmt(over[1])} |")
    square = result.get("square")
    if square:
        lines += ["", f"{square['attack']} on the clean-correct images among the first {square['images']} "
                      f"({square['queries_spent']} queries on examples still correct: the floor):", "",
                  "| implementation | robust acc. | s | x floor |", "|---|---|---|---|"]
        for label, impl in square["implementations"].items():
            lines.append(f"| {names[label]} | {impl['robust']:.3f} | {impl['seconds']:.1f} | {impl['vs_floor']:.2f} |")
    return "\n".join(lines)


def run_benchmark():
    global clock
    import keras
    import tensorflow as tf

    from seat_tf import data, fileio

    out_dir = os.path.dirname(os.path.abspath(FLAGS.out))
    os.makedirs(out_dir, exist_ok=True)
    clock = CLOCKS[FLAGS.clock]
    keras.utils.set_random_seed(FLAGS.seed)
    train_start = time.perf_counter()
    classifier = build_classifier(FLAGS.model, FLAGS.train_steps, FLAGS.dataset, FLAGS.seed,
                                  save_to=None if FLAGS.model else os.path.join(out_dir, "model.keras"))
    train_seconds = time.perf_counter() - train_start
    x, y = data.first_examples(FLAGS.dataset, "test", max(FLAGS.limit, FLAGS.square_limit))
    floor = Floor(classifier, x[: FLAGS.limit], y[: FLAGS.limit], FLAGS.batch_size)
    art_rounds = (FLAGS.repeats + 1 if FLAGS.art_rounds is None else FLAGS.art_rounds) if FLAGS.art else 0
    if art_rounds and not art_available():
        print("[eval_speed] ART is not installed (pip install 'seat-tf[bench]'): seat-tf only.", flush=True)
        art_rounds = 0
    baseline = load_baseline(FLAGS.baseline_from) if FLAGS.baseline_from else None
    result = dict(
        model=FLAGS.model, train_steps=None if FLAGS.model else FLAGS.train_steps, train_seconds=train_seconds,
        dataset=FLAGS.dataset, images=FLAGS.limit, batch_size=FLAGS.batch_size, eps=FLAGS.eps, seed=FLAGS.seed,
        tensorflow=tf.__version__, clock=FLAGS.clock, art_version=None, baseline_from=FLAGS.baseline_from,
        floor_rates=floor.measure(), attacks=[],
    )
    if art_rounds:
        import art

        result["art_version"] = art.__version__
    elif FLAGS.art:
        result["art_missing"] = "adversarial-robustness-toolbox is not installed: no ART rows."
    for name in FLAGS.attacks:
        result["attacks"].append(measure_gradient_attack(
            name, classifier, floor, x[: FLAGS.limit], y[: FLAGS.limit], FLAGS.batch_size, FLAGS.eps, FLAGS.seed,
            FLAGS.repeats, art_rounds, baseline))
        fileio.write_json_atomic(result, FLAGS.out)
    if FLAGS.square_limit:
        result["square"] = measure_square(classifier, floor, x[: FLAGS.square_limit], y[: FLAGS.square_limit],
                                          FLAGS.batch_size, FLAGS.eps, FLAGS.seed, FLAGS.square_queries, baseline)
    fileio.write_json_atomic(result, FLAGS.out)
    return result


def main(argv):
    del argv
    from benchmarks import runner

    result = json.load(open(FLAGS.out)) if FLAGS.report_only else run_benchmark()
    table = markdown(result)
    print(table)
    if FLAGS.readme:
        runner.replace_readme_section(FLAGS.readme, README_SECTION, table)


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
