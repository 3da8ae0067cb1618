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
