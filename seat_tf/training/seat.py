"""SEAT: Stable and Efficient Adversarial Training through Local Linearization.

One training step (the paper's Algorithm 1), with l the cross-entropy and d = x' - x:

    clean pass   l(x), g = grad_x l(x)                 (shared by attack and objective)
    inner step   x0 = x + random start in the eps-ball
                 x' = Proj( x0 + alpha * sign grad_x0 [ margin(x0) + lam * |l(x0) - l(x) - d0.g| ] )
    objective    flood( mean l(x') ; b ) + lam * mean |l(x') - l(x) - d.g|

The margin loss max_{j != y} z_j - z_y finds the point closest to the decision boundary;
the linearity term keeps the loss locally linear, so a one-step attack stays a good
approximation of the inner maximization (no catastrophic overfitting); flooding keeps the
adversarial loss from collapsing to zero.

`SEATModel` takes the method's three hyperparameters (epsilon, lam, flood level); *how* the
inner step and the linearity term are computed (the library's default, the paper's formula,
the authors' PyTorch code, or an ablation) is one `SEATVariant`, named by a preset.
"""

import dataclasses

import keras
import tensorflow as tf

from seat_tf import attacks, losses
from seat_tf.training.base import AdversarialModel

REDUCTIONS = ("example", "batch")


@dataclasses.dataclass(frozen=True)
class SEATVariant:
    """How SEAT computes its inner step and linearity term (the default: the library's).

    Fields:
      init: attack start: "corner" (authors' code: x + eps * random sign), "uniform" or "zero".
      rel_step_size: attack step relative to eps when step_size is None (1.0, the authors').
      attack_steps: signed steps of the inner attack (1: the paper's single step). More steps
        buy a stronger adversary with the same objective, at one forward and backward pass
        each (a research option: README, "Which method for my time budget?").
      step_size: absolute attack step (overrides rel_step_size).
      attack_loss: "margin" (paper) or "ce" (ablation: SEAT without the margin-loss attack).
      margin_on: "logits" (paper's formula) or "probs" (authors' code).
      attack_lam: weight of the linearity term inside the attack (None: the model's lam).
      reduction: "example" takes |residual| per example, then the mean; "batch" takes the
        absolute value of the batch-mean residual, as the authors' code does.
      double_backprop: let the objective's gradient flow through grad_x l(x) (one more
        backward pass); False treats g as a constant, as the authors' code does.
      linearity_clip: clips each example's |residual| at this value in the objective.
      clean_loss_gradient: let the objective's gradient flow through l(x) in the linearity
        term (the paper's and the authors' form). Minimizing |l(x') - l(x) - d.g| then also
        pushes the clean loss l(x) *up* whenever the residual is positive, a loop that made
        SEAT diverge on a CNN without in-model normalization (README, "SEAT on your own
        classifier"). The default, False, treats l(x) as a fixed target: the term only pulls
        l(x') towards its linear prediction, and the step needs no weight gradients through
        the clean pass (24% cheaper).
    """

    init: str = "corner"
    rel_step_size: float = 1.0
    attack_steps: int = 1
    step_size: float = None
    attack_loss: str = "margin"
    margin_on: str = "logits"
    attack_lam: float = None
    reduction: str = "example"
    double_backprop: bool = False
    linearity_clip: float = None
    clean_loss_gradient: bool = False

    def __post_init__(self):
        if self.init not in ("corner", "uniform", "zero"):
            raise ValueError(f"init must be 'corner', 'uniform' or 'zero', got {self.init!r}.")
        if self.rel_step_size <= 0:
            raise ValueError(f"rel_step_size must be > 0, got {self.rel_step_size}.")
        if isinstance(self.attack_steps, bool) or not isinstance(self.attack_steps, int) or self.attack_steps < 1:
            raise ValueError(f"attack_steps must be an integer >= 1, got {self.attack_steps!r}.")
        if self.step_size is not None and self.step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}.")
        if self.attack_loss not in ("margin", "ce"):
            raise ValueError(f"attack_loss must be 'margin' or 'ce', got {self.attack_loss!r}.")
        if self.margin_on not in ("logits", "probs"):
            raise ValueError(f"margin_on must be 'logits' or 'probs', got {self.margin_on!r}.")
        if self.attack_lam is not None and self.attack_lam < 0:
            raise ValueError(f"attack_lam must be >= 0, got {self.attack_lam}.")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}.")
        if self.linearity_clip is not None and self.linearity_clip <= 0:
            raise ValueError(f"linearity_clip must be > 0 or None, got {self.linearity_clip}.")
        if self.linearity_clip is not None and self.reduction == "batch":
            raise ValueError("linearity_clip clips each example's |residual|; reduction='batch' takes |mean residual| "
                             "over the batch, so the two cannot be combined.")

    @classmethod
    def named(cls, variant):
        """A SEATVariant from a preset name, a dict of fields (over the default) or itself."""
        if isinstance(variant, cls):
            return variant
        if variant is None:
            return cls()
        if isinstance(variant, str):
            if variant not in PRESETS:
                raise ValueError(f"Unknown SEAT preset {variant!r}; choose one of {sorted(PRESETS)}.")
            return PRESETS[variant][1]
        if isinstance(variant, dict):
            unknown = sorted(set(variant) - set(VARIANT_FIELDS))
            if unknown:
                raise ValueError(f"Unknown SEAT variant option(s) {unknown}; known: {list(VARIANT_FIELDS)}.")
            return cls(**variant)
        raise ValueError(f"variant must be a preset name, a dict or a SEATVariant, got {type(variant).__name__}.")

    def to_dict(self):
        return dataclasses.asdict(self)


VARIANT_FIELDS = tuple(field.name for field in dataclasses.fields(SEATVariant))

# Named settings: preset -> (lam, variant). "default": this library's. "paper": the paper's
# formulas (margin on logits, per-example linearity error, lam 0.5, gradient through l(x) in
# the linearity term, as written in its objective). "authors_code": what the authors' PyTorch
# code (devicerxx/SEAT, main.py) does instead: margin on softmax probabilities, the absolute
# value of batch means, lam 0.6.
PRESETS = {
    "default": (0.5, SEATVariant()),
    "paper": (0.5, SEATVariant(clean_loss_gradient=True)),
    "authors_code": (0.6, SEATVariant(margin_on="probs", reduction="batch", clean_loss_gradient=True)),
}


@keras.saving.register_keras_serializable(package="seat_tf")
class SEATModel(AdversarialModel):
    """SEAT adversarial training as a Keras model; train it with `compile` + `fit`.

    Args:
      classifier: Keras model, images in [0, 1] -> logits.
      epsilon: L-inf radius (8/255 in the paper for CIFAR-10).
      lam: weight of the linearity term in both the attack and the objective (paper: 0.5;
        the authors' code uses 0.6).
      flood_level: flood level b on the adversarial cross-entropy; None turns flooding off
        (SEAT), a value gives SEAT-FL.
      variant: how the step is computed: a preset name ("default", "paper", "authors_code"),
        a `SEATVariant`, or a dict of SEATVariant fields over the default.
      **kwargs: the training skeleton's options (`AdversarialModel`: val_attack, seed, ...).
        SEAT defaults to first_layer_centring="auto": on a classifier whose first layer sees
        uncentred pixels, that layer trains as if its input were centred (the function stays
        the user's), which closed SEAT's gap to the same classifier with in-model
        normalization (README, "SEAT on your own classifier"). A no-op on a classifier that
        normalizes its input.

    `SEATModel.from_preset(name, classifier, **overrides)` builds a named preset with any lam,
    flood level or variant field overridden by keyword (what configs use).
    """

    logged_metrics = ("linearity_error", "adv_loss")

    def __init__(self, classifier, epsilon=8 / 255, lam=0.5, flood_level=None, variant="default", **kwargs):
        misplaced = sorted(set(kwargs) & set(VARIANT_FIELDS))
        if misplaced:
            raise ValueError(f"{misplaced} belong to SEAT's variant: pass variant=dict({misplaced[0]}=...) or "
                             f"SEATModel.from_preset('default', classifier, {misplaced[0]}=...).")
        kwargs.setdefault("first_layer_centring", "auto")
        super().__init__(classifier, epsilon=epsilon, **kwargs)
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}.")
        if flood_level is not None and flood_level < 0:
            raise ValueError(f"flood_level must be >= 0 or None (off), got {flood_level}.")
        self.lam = float(lam)
        self.flood_level = None if flood_level is None else float(flood_level)
        self.variant = SEATVariant.named(variant)

    @property
    def attack_lam(self):
        """Weight of the linearity term inside the attack."""
        return self.lam if self.variant.attack_lam is None else self.variant.attack_lam

    @property
    def clean_pass(self):
        """Derived from the variant and lam, so switching double backprop on
        (`use_double_backprop`) cannot leave it stale. With lam 0 in the attack and the
        objective nothing needs grad_x l(x): the step skips it (one forward and backward pass
        fewer, about a fifth of a 3-step step) and logs no linearity_error (the CO monitor's
        co_linearity_error still measures it on held-out images)."""
        if self.variant.double_backprop:
            return "differentiable_gradient"
        return "gradient" if self.lam > 0 or self.attack_lam > 0 else "value"

    @classmethod
    def from_preset(cls, preset, classifier, **overrides):
        """SEATModel of a named preset (`PRESETS`), with lam, flood_level, any SEATVariant field
        or skeleton option overridden by keyword (a flat namespace, as configs write it)."""
        if preset not in PRESETS:
            raise ValueError(f"Unknown SEAT preset {preset!r}; choose one of {sorted(PRESETS)}.")
        lam, variant = PRESETS[preset]
        changes = {name: overrides.pop(name) for name in VARIANT_FIELDS if name in overrides}
        overrides.setdefault("lam", lam)
        return cls(classifier, variant=dataclasses.replace(variant, **changes), **overrides)

    @classmethod
    def from_config(cls, config):
        # Archives saved by seat-tf 0.1 hold the variant's fields flat; fold them in.
        config = dict(config)
        flat = {name: config.pop(name) for name in VARIANT_FIELDS if name in config}
        if flat:
            config["variant"] = {**SEATVariant.named(config.get("variant")).to_dict(), **flat}
        return super().from_config(config)

    def get_config(self):
        config = super().get_config()
        config.update(lam=self.lam, flood_level=self.flood_level, variant=self.variant.to_dict())
        return config

    def scale_attack_step(self, factor):
        """Multiplies the attack step (step_size if set, else rel_step_size); returns the new
        value. The step is baked into the traced train step: the caller retraces."""
        field = "step_size" if self.variant.step_size is not None else "rel_step_size"
        value = getattr(self.variant, field) * factor
        self.variant = dataclasses.replace(self.variant, **{field: value})
        return value

    def use_double_backprop(self):
        """Turns double backprop on from the next traced step (what `DivergenceGuard(
        on_drift="double_backprop")` does when the linearity term drifts up); returns False if
        it was on already. The objective's gradient then flows through grad_x l(x), the only
        setting that held the linearity term flat in every eps-0.3 run (README, "SEAT on your
        own classifier"). The caller retraces."""
        if self.variant.double_backprop:
            return False
        self.variant = dataclasses.replace(self.variant, double_backprop=True)
        return True

    def _attack_score(self, y, logits):
        if self.variant.attack_loss == "ce":
            return losses.cross_entropy(y, logits)
        return losses.margin_loss(y, logits, on=self.variant.margin_on)

    def clean_attack_objective(self):
        # From a zero start the linearity term and its gradient vanish at x (d = 0), so the
        # attack's first gradient is that of the margin (or CE) score at the clean x.
        return self._attack_score if self.variant.init == "zero" else None

    def perturb(self, x, y, epsilon, clean):
        """Inner step: signed step(s) on margin loss + lam * linearity error, from a random start."""
        variant = self.variant
        lam = self.attack_lam

        def attack_objective(x_adv):
            logits = self.attack_logits(x_adv)
            if clean.grad is None:  # lam 0 everywhere: no linearity term (clean_pass)
                return self._attack_score(y, logits)
            residual = losses.linearity_residual(losses.cross_entropy(y, logits), clean.loss, x_adv - x, clean.grad)
            if variant.reduction == "batch":
                # Gradient of |mean residual| (the authors' form): each example's residual
                # with the sign of the *global* batch's mean, the mean the objective takes, so a
                # replica attacks as one device would. Signed steps make 1/B irrelevant.
                linearity = residual * tf.sign(self.global_mean(residual))
            else:
                linearity = tf.abs(residual)
            return self._attack_score(y, logits) + lam * linearity

        step = variant.step_size if variant.step_size is not None else variant.rel_step_size * epsilon
        return attacks.linf_attack(
            attack_objective, x, eps=epsilon, step_size=step, steps=variant.attack_steps, init=variant.init,
            seed=self.step_seed(),
            initial_gradient=clean.attack_grad,
        )

    def objective(self, x, y, x_adv, clean):
        """Flooded adversarial cross-entropy + lam * linearity error between x and x_adv."""
        variant = self.variant
        adv_logits = self.classify(x_adv, training=True)
        adv_loss = losses.cross_entropy(y, adv_logits)
        flooded = self.flooded_mean(adv_loss, self.flood_level)
        if clean.grad is None:  # lam 0 everywhere: the flooded adversarial loss alone (clean_pass)
            return flooded, {"adv_logits": adv_logits, "adv_loss": adv_loss}
        clean_loss = clean.loss if variant.clean_loss_gradient else tf.stop_gradient(clean.loss)
        residual = losses.linearity_residual(adv_loss, clean_loss, x_adv - x, clean.grad)
        error = tf.abs(residual)
        if variant.reduction == "batch":
            linearity = self.abs_of_batch_mean(residual)
        else:
            clipped = error if variant.linearity_clip is None else tf.minimum(error, variant.linearity_clip)
            linearity = self.batch_mean(clipped)
        loss = flooded + self.lam * linearity
        return loss, {"adv_logits": adv_logits, "linearity_error": error, "adv_loss": adv_loss}
