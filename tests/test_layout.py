"""The architecture as a test: seat_tf's modules import only from lower layers (no circles),
and no module reaches into another's private names."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lowest first. A module may import modules of lower layers (and of its own package).
LAYERS = [
    {"losses", "precision", "fileio", "schedules", "keras_compat", "models", "validation", "defaults"},
    {"data", "attacks"},
    {"errors", "reporting", "diagnostics", "distribute"},
    {"training", "evaluation"},
    {"export", "experiment"},
    {"tuning"},
    {"cli"},
]
LAYER_OF = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _imports():
    """(importing unit, imported unit, imported names) for every seat_tf import in seat_tf/."""
    for folder, _, files in os.walk(os.path.join(ROOT, "seat_tf")):
        for file_name in files:
            if not file_name.endswith(".py"):
                continue
            path = os.path.join(folder, file_name)
            parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
            unit = parts[1] if len(parts) > 2 or parts[1] != "__init__" else None
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("seat_tf"):
                    target = node.module.split(".")[1] if "." in node.module else None
                    names = [a.name for a in node.names]
                    if target is None:  # from seat_tf import a, b
                        for name in names:
                            yield unit, name, [], path
                    else:
                        yield unit, target, names, path


def test_every_unit_has_a_layer():
    units = {name[:-3] if name.endswith(".py") else name for name in os.listdir(os.path.join(ROOT, "seat_tf"))
             if not name.startswith("__") and (name.endswith(".py") or os.path.isdir(os.path.join(ROOT, "seat_tf", name)))}
    assert units <= set(LAYER_OF), f"give these a layer in LAYERS: {sorted(units - set(LAYER_OF))}"


def test_imports_only_go_down_the_layers():
    upward = [(path, unit, target) for unit, target, _, path in _imports()
              if unit is not None and target != unit and LAYER_OF[target] >= LAYER_OF[unit]]
    assert not upward, "\n".join(f"{os.path.relpath(p, ROOT)}: {u} imports {t}" for p, u, t in upward)


def test_no_private_names_cross_module_boundaries():
    private = [(path, target, name) for unit, target, names, path in _imports()
               for name in names if name.startswith("_") and target != unit]
    assert not private, private


def test_one_eps_rule_everywhere(make_tiny_cnn):
    """The model, the experiment config, the evaluation and the diagnostics share one eps rule
    (seat_tf.validation.check_eps): a radius written in 0-255 units is refused by each."""
    import pytest

    import seat_tf
    from seat_tf import diagnostics, experiment
    from seat_tf.validation import check_eps

    for bad in (8, -0.1, float("nan"), "0.1", True):
        with pytest.raises(ValueError):
            check_eps(bad)
    check_eps(0.0)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        check_eps(0.0, positive=True)
    with pytest.raises(ValueError, match="write 8/255"):
        seat_tf.SEATModel(make_tiny_cnn(), epsilon=8)
    config = experiment.base_config()
    config.method.epsilon = 8.0
    with pytest.raises(ValueError, match="write 8/255"):
        experiment.validate(config)
    with pytest.raises(ValueError, match="write 8/255"):
        seat_tf.evaluate(make_tiny_cnn(), None, eps=8.0)
    with pytest.raises(ValueError, match="write 8/255"):
        diagnostics.check_eps(8.0)


def test_every_planted_bug_of_the_mutation_check_still_applies():
    """scripts/mutation_check.py plants bugs by exact text substitution: a refactor that moves
    the text would silently retire a mutant, so each must still occur exactly once."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mutation_check", os.path.join(ROOT, "scripts", "mutation_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = [mutant[0] for mutant in module.MUTANTS]
    assert len(names) == len(set(names)) and len(names) >= 40
    for mutant in module.MUTANTS:
        name, path, text, replacement = mutant[:4]
        source = open(os.path.join(ROOT, path)).read()
        assert source.count(text) == 1, f"mutant {name}: its text occurs {source.count(text)} times in {path}"
        assert replacement != text
        for test in module.tests_of(mutant):
            assert os.path.exists(os.path.join(ROOT, test.split("::")[0])), (name, test)
