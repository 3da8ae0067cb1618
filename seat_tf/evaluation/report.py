"""Reports of an evaluation: the Markdown table and report, the failed checks, and the
files (report.json, report.md, robust_accuracy_vs_eps.png)."""

import os

from seat_tf import fileio, reporting


def _fmt(value, digits=4):
    return "" if value is None else f"{value:.{digits}f}"


def format_table(result):
    """A Markdown table of a result from `evaluate`: accuracy under each attack, the number of
    examples it ran on and the clean accuracy on those same examples (subsets differ)."""
    lines = ["| attack | examples | clean on these | robust accuracy | seconds |", "|---|---|---|---|---|",
             f"| clean | {result['num_examples']} | {result['clean_accuracy']:.4f} | | |"]
    for name, entry in result["attacks"].items():
        label = f"{name} (all of {', '.join(entry['derived_from'])})" if entry.get("derived_from") else name
        clean = _fmt(entry.get("clean_accuracy"))
        lines.append(f"| {label} | {entry.get('num_examples', '')} | {clean} | {entry['robust_accuracy']:.4f} | "
                     f"{entry['seconds']:.1f} |")
        for stage in entry.get("stages", []):
            lines.append(f"| &nbsp;&nbsp;after {stage['attack']} | | | {stage['robust_accuracy']:.4f} | "
                         f"{stage['seconds']:.1f} |")
    lines.append(f"| worst case | {result.get('worst_case_num_examples', result['num_examples'])} | | "
                 f"{result['worst_case_accuracy']:.4f} | |")
    return "\n".join(lines)


def failed_sanity_checks(result):
    """Names of the sanity checks of an evaluation result that failed (skipped ones are not failures)."""
    return [name for name, check in result.get("sanity_checks", {}).items() if check["passed"] is False]


def format_report(result, title="Robustness report", plot_name=None):
    """The Markdown report: the table, a paper-style row, minimal-perturbation attacks and the
    sanity checks (failures in bold, first)."""
    eps = result["eps"]
    lines = [f"# {title}", ""]
    for key in ("model", "dataset"):
        if key in result:
            lines.append(f"- {key}: `{result[key]}`")
    lines += [f"- eps (L-inf, [0, 1] scale): {eps:g} (= {eps * 255:.1f}/255)",
              f"- examples: {result['num_examples']} (attacks marked with fewer examples ran on the first N); "
              f"seed {result['seed']}",
              "- robust = correct on the clean image and under the attack; seconds are wall-clock and include graph "
              "tracing; a composite derived from its members' runs shows their seconds", ""]
    checks = result.get("sanity_checks", {})
    failed = failed_sanity_checks(result)
    if failed:
        lines += [f"**WARNING: {len(failed)} sanity check(s) failed ({', '.join(failed)}); see below. "
                  "The robust accuracies above may overstate robustness.**", ""]
    lines += ["## Robust accuracy", "", format_table(result), ""]
    names = list(result["attacks"])
    if names:
        lines += ["Paper-style row (accuracy, %):", "",
                  "| clean | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1),
                  f"| {100 * result['clean_accuracy']:.2f} | "
                  + " | ".join(f"{100 * result['attacks'][n]['robust_accuracy']:.2f}" for n in names) + " |", ""]
    if result.get("minimal_perturbation"):
        lines += ["## Minimal-perturbation attacks (L2)", "",
                  "| attack | examples | fooling rate | median L2 | mean L2 | seconds |", "|---|---|---|---|---|---|"]
        for name, m in result["minimal_perturbation"].items():
            lines.append(f"| {name} | {m['num_examples']} | {m['fooling_rate']:.4f} | {_fmt(m['median_l2'])} | "
                         f"{_fmt(m['mean_l2'])} | {m['seconds']:.1f} |")
        lines += ["", "Fooling rate over the correctly classified examples; norms over the fooled ones.", ""]
    if checks:
        lines += ["## Sanity checks", ""]
        order = sorted(checks, key=lambda n: {False: 0, None: 2}.get(checks[n]["passed"], 1))
        for name in order:
            check = checks[name]
            mark = {True: "PASS", False: "**FAIL**", None: "skipped"}[check["passed"]]
            lines.append(f"- {mark} `{name}`: {check['detail']}")
        if result.get("sanity_attacks"):
            lines += ["", "Extra runs for the checks: " + ", ".join(
                f"{k} {v['robust_accuracy']:.4f} (n={v['num_examples']}, {v['seconds']:.1f} s)"
                for k, v in result["sanity_attacks"].items())]
        lines.append("")
    if "sweep" in result and plot_name:
        sweep = result["sweep"]
        lines += ["## Robust accuracy against eps", "",
                  f"On the first {sweep['num_examples']} examples: ![accuracy vs eps]({plot_name})", "",
                  "| eps | " + " | ".join(sweep["accuracy"]) + " |", "|" + "---|" * (len(sweep["accuracy"]) + 1)]
        for i, value in enumerate(sweep["eps"]):
            lines.append(f"| {value:g} | " + " | ".join(f"{acc[i]:.4f}" for acc in sweep["accuracy"].values()) + " |")
        lines.append("")
    return "\n".join(lines)


def write_report(result, outdir, title="Robustness report"):
    """Writes report.json, report.md and (if the result has a sweep) robust_accuracy_vs_eps.png
    into outdir, each atomically. Returns the paths written."""
    os.makedirs(outdir, exist_ok=True)
    paths = {"json": os.path.join(outdir, "report.json"), "md": os.path.join(outdir, "report.md")}
    plot_name = None
    if "sweep" in result:
        plot_name = "robust_accuracy_vs_eps.png"
        paths["png"] = os.path.join(outdir, plot_name)
        reporting.plot_accuracy_vs_eps(result["sweep"], paths["png"], eps=result["eps"])
    fileio.write_json_atomic(result, paths["json"])
    fileio.write_text_atomic(format_report(result, title=title, plot_name=plot_name), paths["md"])
    return paths
