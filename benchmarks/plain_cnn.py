"""The plain-CNN study (issue 14): does SEAT hold on a classifier without in-model
normalization? Runs configs/fashion_mnist_plain_cnn.py over a fixed list of (model, variant,
eps, epochs, seed), resumably (one JSON record per run), and writes study.md / results.json.

    python -m benchmarks.plain_cnn --out=docs/results/plain_cnn            # run what is missing, report
    python -m benchmarks.plain_cnn --out=docs/results/plain_cnn --report_only
    python -m benchmarks.plain_cnn --out=... --only=norm_ncg_dbp_eps0.3_e10_s0   # one run of the study
    python -m benchmarks.plain_cnn --out=... --import_runs=/path/a,/path/b  # records from finished workdirs
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from benchmarks import runner  # noqa: E402

FLAGS = flags.FLAGS
CONFIG = "configs/fashion_mnist_plain_cnn.py"

# (model, variant, eps, epochs, seed), in the order they run.
STUDY = (
    [("plain", "paper", 0.3, 5, 0)]
    + [("plain", v, 0.3, 5, 0) for v in ("ncg", "dbp", "probs", "clip", "uniform")]
    + [(m, "ncg", 0.2, 5, s) for s in (0, 1) for m in ("plain", "norm")]
    + [(m, "ncg", 0.3, 10, s) for s in (0, 1) for m in ("plain", "norm")]
    + [("plain", "ncg_dbp", 0.3, 10, s) for s in (1, 0)]
    + [("norm", "ncg_dbp", 0.3, 10, s) for s in (0, 1)]
    + [(m, "paper", 0.2, 5, s) for s in (0, 1) for m in ("plain", "norm")]
    + [(m, "paper", 0.3, 10, s) for s in (0, 1) for m in ("plain", "norm")]
    + [(m, "ncg_steps3", 0.3, 10, s) for s in (0, 1) for m in ("plain", "norm")]
    + [(m, "ncg_steps3u", 0.3, 10, s) for s in (0, 1) for m in ("plain", "norm")]
    + [("plain", "ncg_switch", 0.3, 10, 1)]
    + [(m, "ncg_steps3_switch", 0.3, 10, 1) for m in ("plain", "norm")]
    # Controls (is the plain/normalized gap SEAT's?): PGD-10-AT, then steps3u without lam.
    + [(m, "pgd_at", 0.3, 10, s) for s in (0, 1) for m in ("plain", "norm")]
    + [(m, "ncg_steps3u_lam0", 0.3, 10, s) for s in (0, 1) for m in ("plain", "norm")]
    # PGD-10-AT's gap at eps 0.2, the radius of the 3-point criterion.
    + [(m, "pgd_at", 0.2, 5, s) for s in (0, 1) for m in ("plain", "norm")]
    # The linearity term's two roles apart: in the attack only, in the objective only.
    + [(m, v, 0.3, 10, s) for s in (0, 1) for v in ("ncg_steps3u_alam0", "ncg_steps3u_olam0") for m in ("plain", "norm")]
    # Double backprop made SEAT indifferent to the classifier's normalization at eps 0.3: at 0.2?
    + [(m, "ncg_dbp", 0.2, 5, s) for s in (0, 1) for m in ("plain", "norm")]
    # An eps warm-up over the first epoch, against the plain CNN's early climb of the term.
    + [(m, "ncg_warmup", eps, epochs, s) for eps, epochs in ((0.2, 5), (0.3, 10)) for s in (0, 1)
       for m in ("plain", "norm")]
    # SEATModel's defaults since first-layer centring, on the plain CNN (on the normalized one
    # "auto" changes nothing: its partner is "ncg", the 0.1 defaults): eps 0.3 (eps 0.2:
    # benchmarks.normalization_gap, 4 seeds on all 10,000 test images).
    + [("plain", "centring", 0.3, 10, s) for s in (0, 1)]
)


def define_flags():
    flags.DEFINE_string("out", "runs/plain_cnn", "Output folder.")
    flags.DEFINE_boolean("report_only", False, "Only rebuild the report.")
    flags.DEFINE_list("import_runs", [], "Finished `seat-tf train` workdirs of study configs to record.")
    flags.DEFINE_string("readme", None, "Also rewrite this README's plain-cnn-table section.")
    flags.DEFINE_list("only", [], "Run only these study keys (e.g. norm_ncg_dbp_eps0.3_e10_s0); default: all missing.")


def key(model, variant, eps, epochs, seed):
    return f"{model}_{variant}_eps{eps:g}_e{epochs}_s{seed}"


def config_for(model, variant, eps, epochs, seed):
    config = runner.load_config(CONFIG, f"{model},{variant}")
    config.method.epsilon, config.epochs, config.seed = eps, epochs, seed
    return config


def identify(saved):
    """(model, variant, eps, epochs, seed) of a saved config.json that matches a study config."""
    from seat_tf.training.seat import PRESETS

    mean, std = (tuple(saved["model"].get(k) or ()) for k in ("mean", "std"))
    if (mean == (0.0,)) != (std == (1.0,)):
        raise ValueError(f"A CNN standardized by mean {mean} and std {std} (one half of the normalization: "
                         "benchmarks.normalization_gap's split) is not one of this study's.")
    model = "plain" if std == (1.0,) else "norm"
    method = saved["method"]
    if method.get("name") == "seat" and "preset" not in method:
        # SEATModel's own defaults (no preset): "centring" is the only such variant the study
        # runs ("defaults" is the normalization-gap benchmark's).
        if set(method) <= {"name", "epsilon", "first_layer_centring"} and method.get("first_layer_centring") == "auto":
            return model, "centring", method["epsilon"], saved["epochs"], saved["seed"]
        raise ValueError(f"No study variant matches {method}.")
    # Options a saved config does not name took the paper's values (SEATModel's defaults then).
    lam, paper = PRESETS["paper"]
    defaults = dict(paper.to_dict(), lam=lam, epsilon_warmup_steps=0, first_layer_centring="off")
    on_drift = (saved.get("diagnostics") or {}).get("on_drift", "warn")
    # Each variant's wanted options are complete (every field, unnamed ones at the paper's
    # values), so at most one variant matches and the order does not matter. "defaults" and
    # "centring" name no preset (handled above).
    for variant in (v for v in runner.load_config_module(CONFIG).VARIANTS if v not in ("defaults", "centring")):
        config = config_for(model, variant, method["epsilon"], saved["epochs"], saved["seed"])
        wanted = {**defaults, **{k: v for k, v in config.method.to_dict().items() if k != "preset"}}
        if config.diagnostics.get("on_drift", "warn") != on_drift:
            continue
        # Both ways: an option the saved config names (an eps warm-up) must be wanted too.
        if all(method.get(k, defaults.get(k)) == wanted.get(k, defaults.get(k))
               for k in (set(wanted) | set(method)) - {"preset"}):
            return model, variant, method["epsilon"], saved["epochs"], saved["seed"]
    raise ValueError(f"No study variant matches {method}.")


def import_run(workdir, out):
    """A record from a finished workdir (config.json, history.json, report.json)."""
    saved = json.load(open(os.path.join(workdir, "config.json")))
    entry = identify(saved)
    config = config_for(*entry)
    history = json.load(open(os.path.join(workdir, "history.json")))
    report = json.load(open(os.path.join(workdir, "report.json")))
    seconds_path = os.path.join(workdir, "train_seconds.json")
    seconds = json.load(open(seconds_path)) if os.path.exists(seconds_path) else []
    record = runner.record_of(config, history, report, seconds)
    record.update(model=entry[0], variant=entry[1], imported_from=os.path.basename(workdir.rstrip("/")))
    from seat_tf import fileio

    fileio.write_json_atomic(record, os.path.join(out, "runs", key(*entry) + ".json"))
    return key(*entry)


def markdown(records):
    lines = ["| model | variant | eps | epochs | seed | clean | PGD-20 (1000) | linearity term, last epochs | diverged |",
             "|---|---|---|---|---|---|---|---|---|"]
    order = {k: i for i, k in enumerate(key(*entry) for entry in STUDY)}
    for r in sorted(records, key=lambda r: order.get(key(r["model"], r["variant"], r["eps"], r["epochs"], r["seed"]), 99)):
        lin = r["history"].get("linearity_error", [])
        lin_text = " ".join(f"{v:.3g}" for v in lin[-3:])
        variant = r["variant"] + (f" (double backprop after epoch {r['switched_epoch']})" if r.get("switched_epoch") else "")
        lines.append(f"| {r['model']} | {variant} | {r['eps']:g} | {r['epochs']} | {r['seed']} | {r['clean']:.3f} | "
                     f"{r['robust'].get('pgd20', float('nan')):.3f} | {lin_text} | {'yes' if r['diverged'] else 'no'} |")
    return "\n".join(lines) + "\n"


def write_report(out, readme=None):
    records = runner.load_records(os.path.join(out, "runs"))
    return runner.publish(out, markdown(records), "study.md", records, "plain-cnn-table", readme)


def main(argv):
    del argv
    for workdir in FLAGS.import_runs:
        print(f"[plain_cnn] imported {workdir} as {import_run(workdir, FLAGS.out)}")
    if not FLAGS.report_only:
        unknown = set(FLAGS.only) - {key(*entry) for entry in STUDY}
        if unknown:
            raise app.UsageError(f"--only names runs that are not in the study: {sorted(unknown)}")
        for entry in STUDY:
            if FLAGS.only and key(*entry) not in FLAGS.only:
                continue
            path = os.path.join(FLAGS.out, "runs", key(*entry) + ".json")
            if os.path.exists(path):
                continue
            print(f"[plain_cnn] {key(*entry)}: training", flush=True)
            runner.run(config_for(*entry), os.path.join(FLAGS.out, "work", key(*entry)), path,
                       model=entry[0], variant=entry[1])
            write_report(FLAGS.out, FLAGS.readme)
    print(write_report(FLAGS.out, FLAGS.readme))


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
