"""One registry for every attack name: `get_attack("pgd50x10")`, "fgsm", "apgd-ce",
"standard", "apgd-ce+square", ... (see NAMES_HELP), and the composite protocol that runs
named attacks in sequence. It sits above the engine (`engine.py`: FGSM/PGD/CW-inf/MI-FGSM as
`LinfPGD` configurations), the suite (`suite.py`: APGD, Square; `minimal_l2.py`: DeepFool, CW-L2) and FAB-T
(`fab.py`).
"""

import dataclasses
import re
from typing import Optional, Tuple

import tensorflow as tf

from seat_tf.attacks.engine import LinfPGD, as_seed, no_autograph, wrong_predictions
from seat_tf.attacks.fab import FAB
from seat_tf.attacks.minimal_l2 import CarliniWagnerL2, DeepFool
from seat_tf.attacks.suite import APGD, Square

# AutoAttack's standard version (Croce & Hein, 2020): APGD-CE (100 steps), APGD-T (9 targets x
# 100 steps), FAB-T (9 targets x 100 steps), Square (5000 queries), each on what is left.
STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
# Its two gradient stages, which decide nearly all of its result at a fraction of the cost:
# for the frequent checks (checkpoints, sweeps), not for a final number.
FAST = ("apgd-ce", "apgd-t")

# Fixed names: the paper protocols and the AutoAttack-style composites.
PRESETS = {
    "apgd-ce": lambda: APGD(loss="ce", name="apgd-ce"),
    "apgd-dlr": lambda: APGD(loss="dlr", name="apgd-dlr"),
    "apgd-t": lambda: APGD(loss="dlr", targets=9, name="apgd-t"),
    "fab-t": lambda: FAB(name="fab-t"),
    "square": lambda: Square(name="square"),
    "deepfool": lambda: DeepFool(name="deepfool"),
    "cw-l2": lambda: CarliniWagnerL2(name="cw-l2"),
    "standard": lambda: Composite(STANDARD, name="standard"),
    "aa": lambda: Composite(STANDARD, name="aa"),
    "fast": lambda: Composite(FAST, name="fast"),
}

_PGD_FAMILY = re.compile(r"^(targeted_|targeted_ll_)?(pgd|cw|mifgsm)(\d+)(?:x(\d+))?$")
_NUMBERED = re.compile(r"^(apgd-ce|apgd-dlr|apgd-t|fab-t|square|deepfool|cw-l2)(\d+)(?:x(\d+))?$")

NAMES_HELP = (
    "'fgsm', 'pgdK', 'pgdKxR', 'cwK', 'mifgsmK', 'targeted_pgdK', 'targeted_ll_pgdK', 'apgd-ce[K[xR]]', "
    "'apgd-dlr[K]', 'apgd-t[K]', 'fab-t[K[xR]]', 'square[Q]', 'deepfool', 'cw-l2', 'standard' (= 'aa'), "
    "'fast' (its APGD stages), or members joined by '+' for a composite ('apgd-ce+square')"
)


def get_attack(spec):
    """An attack from a name (see NAMES_HELP), a dict of `LinfPGD` fields, or an attack
    object (returned as is; None too). Raises ValueError for unknown names."""
    if spec is None or callable(spec):
        return spec
    if isinstance(spec, dict):
        return LinfPGD(**spec)
    if not isinstance(spec, str):
        raise ValueError(f"Cannot make an attack from {spec!r}.")
    name = spec.strip().lower()
    if "+" in name:
        return Composite(tuple(part.strip() for part in name.split("+")), name=name)
    if name == "fgsm":
        return LinfPGD(steps=1, rel_step_size=1.0, init="zero", name=name)
    match = _PGD_FAMILY.match(name)
    if match:
        return _pgd_family(name, *match.groups())
    canonical = name.replace("_", "-")
    if canonical in PRESETS:
        return PRESETS[canonical]()
    match = _NUMBERED.match(canonical)
    if not match:
        raise ValueError(f"Unknown attack {spec!r}; use {NAMES_HELP}.")
    kind, number, restarts = match.group(1), int(match.group(2)), int(match.group(3) or 1)
    if restarts != 1 and not kind.startswith(("apgd", "fab")):
        raise ValueError(f"Attack {spec!r}: only APGD, FAB-T and PGD take restarts ('xR').")
    if kind == "apgd-ce":
        return APGD(steps=number, restarts=restarts, loss="ce", name=name)
    if kind == "apgd-dlr":
        return APGD(steps=number, restarts=restarts, loss="dlr", name=name)
    if kind == "apgd-t":
        return APGD(steps=number, restarts=restarts, loss="dlr", targets=9, name=name)
    if kind == "fab-t":
        return FAB(steps=number, restarts=restarts, name=name)
    if kind == "square":
        return Square(queries=number, name=name)
    if kind == "deepfool":
        return DeepFool(steps=number, name=name)
    return CarliniWagnerL2(steps=number, name=name)


def _pgd_family(name, prefix, kind, steps, restarts):
    """"pgdK[xR]", "cwK" (margin loss), "mifgsmK" (momentum, step eps / K), with an optional
    "targeted_" (random target) or "targeted_ll_" (least likely target) prefix."""
    steps, restarts = int(steps), int(restarts or 1)
    target = {None: None, "targeted_": "random", "targeted_ll_": "least_likely"}[prefix]
    if kind == "pgd":
        return LinfPGD(steps=steps, restarts=restarts, name=name, target=target)
    if kind == "cw":
        return LinfPGD(steps=steps, restarts=restarts, loss="margin", name=name, target=target)
    return LinfPGD(
        steps=steps, restarts=restarts, init="zero", momentum=1.0, rel_step_size=1.0 / steps, name=name, target=target
    )


@dataclasses.dataclass(frozen=True)
class Composite:
    """Attacks run in sequence, each only on the examples every earlier one failed to fool
    (AutoAttack's protocol): an example counts as robust only if it survives all members.

    `members` are attack names (or objects). `seat_tf.evaluate` runs the members itself to
    report each stage; calling the composite directly does the same inside one graph.
    """

    members: Tuple = STANDARD
    name: Optional[str] = None

    def __post_init__(self):
        if not self.members:
            raise ValueError("A composite attack needs at least one member.")
        for member in self.stages():
            if getattr(member[1], "threat_model", "linf") != "linf":
                raise ValueError(f"Composite members must be L-inf attacks; {member[0]!r} is not.")

    def stages(self):
        """[(name, attack)] of the members."""
        return [(m if isinstance(m, str) else getattr(m, "name", None) or repr(m), get_attack(m)) for m in self.members]

    @no_autograph
    def __call__(self, model_fn, x, y, eps, seed=None):
        x = tf.cast(x, tf.float32)
        y = tf.cast(y, tf.int32)
        seed = as_seed(seed)
        x_adv = x
        correct = ~wrong_predictions(model_fn(x), y)
        for stage, (_, attack) in enumerate(self.stages()):
            index = tf.where(correct)[:, 0]

            def run(index=index, attack=attack, stage=stage):
                sub = attack(model_fn, tf.gather(x, index), tf.gather(y, index), eps,
                             seed=tf.random.experimental.stateless_fold_in(seed, stage))
                return tf.tensor_scatter_nd_update(x_adv, index[:, None], sub)

            x_adv = tf.cond(tf.size(index) > 0, run, lambda x_adv=x_adv: x_adv)
            correct = correct & ~wrong_predictions(model_fn(x_adv), y)
        return x_adv
