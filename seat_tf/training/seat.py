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
"""

import keras
import tensorflow as tf

from seat_tf import attacks, losses
from seat_tf.training.base import AdversarialModel

REDUCTIONS = ("example", "batch")

# Named settings of SEATModel's options (`SEATModel.from_preset`). "paper": the paper's
# formulas (margin on logits, per-example linearity error, lam 0.5, gradient through l(x) in
# the linearity term, as written in its objective). "authors_code": what the authors'
# PyTorch code (devicerxx/SEAT, main.py) does instead: margin on softmax probabilities, the
# absolute value of batch means, lam 0.6.
PRESETS = {
    "paper": dict(lam=0.5, init="corner", rel_step_size=1.0, attack_loss="margin", margin_on="logits",
                  reduction="example", double_backprop=False, clean_loss_gradient=True),
    "authors_code": dict(lam=0.6, init="corner", rel_step_size=1.0, attack_loss="margin", margin_on="probs",
                         reduction="batch", double_backprop=False, clean_loss_gradient=True),
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
      step_size: attack step; default `rel_step_size * epsilon`.
      rel_step_size: step relative to eps when step_size is None (default 1.0, the authors').
      init: attack start: "corner" (authors' code: x + eps * random sign), "uniform" or "zero".
      attack_loss: "margin" (paper) or "ce" (ablation: SEAT without the margin-loss attack).
      margin_on: "logits" (paper's formula) or "probs" (authors' code).
      attack_lam: weight of the linearity term inside the attack (defaults to lam).
      reduction: "example" takes |residual| per example, then the mean; "batch" takes the
        absolute value of the batch-mean residual, as the authors' code does.
      double_backprop: let the objective's gradient flow through grad_x l(x) (costs one more
        backward pass); False treats g as a constant, as the authors' code does.
      linearity_clip: if set, clips each example's |residual| at this value in the objective
        (bounds the regularizer's gradient when the loss surface is very curved).
      clean_loss_gradient: let the objective's gradient flow through l(x) in the linearity
        term (the paper's and the authors' form, preset "paper"). Minimizing
        |l(x') - l(x) - d.g| then also pushes the clean loss l(x) *up* whenever the residual is
        positive, a loop that made SEAT diverge on a CNN without in-model normalization
        (README, "SEAT on your own classifier"). The default, False, treats l(x) as a fixed
        target: the term only pulls l(x') towards its linear prediction, and the step needs
        no weight gradients through the clean pass (24% cheaper).
    """

    logged_metrics = ("linearity_error", "adv_loss")

    def __init__(
        self,
        classifier,
        epsilon=8 / 255,
        lam=0.5,
        flood_level=None,
        step_size=None,
        rel_step_size=1.0,
        init="corner",
        attack_loss="margin",
        margin_on="logits",
        attack_lam=None,
        reduction="example",
        double_backprop=False,
        linearity_clip=None,
        clean_loss_gradient=False,
        **kwargs,
    ):
        super().__init__(classifier, epsilon=epsilon, **kwargs)
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}.")
        if attack_lam is not None and attack_lam < 0:
            raise ValueError(f"attack_lam must be >= 0, got {attack_lam}.")
        if flood_level is not None and flood_level < 0:
            raise ValueError(f"flood_level must be >= 0 or None (off), got {flood_level}.")
        if step_size is not None and step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {step_size}.")
        if init not in ("corner", "uniform", "zero"):
            raise ValueError(f"init must be 'corner', 'uniform' or 'zero', got {init!r}.")
        if attack_loss not in ("margin", "ce"):
            raise ValueError(f"attack_loss must be 'margin' or 'ce', got {attack_loss!r}.")
        if margin_on not in ("logits", "probs"):
            raise ValueError(f"margin_on must be 'logits' or 'probs', got {margin_on!r}.")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")
        if linearity_clip is not None and linearity_clip <= 0:
            raise ValueError(f"linearity_clip must be > 0 or None, got {linearity_clip}.")
        if linearity_clip is not None and reduction == "batch":
            raise ValueError("linearity_clip clips each example's |residual|; reduction='batch' takes |mean residual| "
                             "over the batch, so the two cannot be combined.")
        self.lam = float(lam)
        self.flood_level = None if flood_level is None else float(flood_level)
        self.step_size = step_size
        self.rel_step_size = float(rel_step_size)
        self.init = init
        self.attack_loss = attack_loss
        self.margin_on = margin_on
        self.attack_lam = attack_lam
        self.reduction = reduction
        self.double_backprop = bool(double_backprop)
        self.linearity_clip = linearity_clip
        self.clean_loss_gradient = bool(clean_loss_gradient)
        self.clean_pass = "differentiable_gradient" if double_backprop else "gradient"

    @classmethod
    def from_preset(cls, preset, classifier, **overrides):
        """SEATModel with the options of a named preset (`PRESETS`: "paper", "authors_code"),
        any of them overridden by keyword."""
        if preset not in PRESETS:
            raise ValueError(f"Unknown SEAT preset {preset!r}; choose one of {sorted(PRESETS)}.")
        return cls(classifier, **{**PRESETS[preset], **overrides})

    def get_config(self):
        config = super().get_config()
        config.update(
            lam=self.lam,
            flood_level=self.flood_level,
            step_size=self.step_size,
            rel_step_size=self.rel_step_size,
            init=self.init,
            attack_loss=self.attack_loss,
            margin_on=self.margin_on,
            attack_lam=self.attack_lam,
            reduction=self.reduction,
            double_backprop=self.double_backprop,
            linearity_clip=self.linearity_clip,
            clean_loss_gradient=self.clean_loss_gradient,
        )
        return config

    def _attack_score(self, y, logits):
        if self.attack_loss == "ce":
            return losses.cross_entropy(y, logits)
        return losses.margin_loss(y, logits, on=self.margin_on)

    def clean_attack_objective(self):
        # From a zero start the linearity term and its gradient vanish at x (d = 0), so the
        # attack's first gradient is that of the margin (or CE) score at the clean x.
        return self._attack_score if self.init == "zero" else None

    def perturb(self, x, y, epsilon, clean):
        """Inner step: one signed step on margin loss + lam * linearity error, from a random start."""
        lam = self.lam if self.attack_lam is None else self.attack_lam

        def attack_objective(x_adv):
            logits = self.attack_logits(x_adv)
            residual = losses.linearity_residual(losses.cross_entropy(y, logits), clean.loss, x_adv - x, clean.grad)
            if self.reduction == "batch":
                # Gradient of |mean residual| (the authors' form): each example's residual
                # with the sign of the *global* batch's mean, the mean the objective takes, so a
                # replica attacks as one device would. Signed steps make 1/B irrelevant.
                linearity = residual * tf.sign(self.global_mean(residual))
            else:
                linearity = tf.abs(residual)
            return self._attack_score(y, logits) + lam * linearity

        step = self.step_size if self.step_size is not None else self.rel_step_size * epsilon
        return attacks.linf_attack(
            attack_objective, x, eps=epsilon, step_size=step, steps=1, init=self.init, seed=self.step_seed(),
            initial_gradient=clean.attack_grad,
        )

    def objective(self, x, y, x_adv, clean):
        """Flooded adversarial cross-entropy + lam * linearity error between x and x_adv."""
        adv_logits = self.classify(x_adv, training=True)
        adv_loss = losses.cross_entropy(y, adv_logits)
        clean_loss = clean.loss if self.clean_loss_gradient else tf.stop_gradient(clean.loss)
        residual = losses.linearity_residual(adv_loss, clean_loss, x_adv - x, clean.grad)
        error = tf.abs(residual)
        if self.reduction == "batch":
            linearity = self.abs_of_batch_mean(residual)
        else:
            clipped = error if self.linearity_clip is None else tf.minimum(error, self.linearity_clip)
            linearity = self.batch_mean(clipped)
        loss = self.flooded_mean(adv_loss, self.flood_level) + self.lam * linearity
        return loss, {"adv_logits": adv_logits, "linearity_error": error, "adv_loss": adv_loss}
