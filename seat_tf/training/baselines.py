"""Baseline adversarial-training methods, each two overrides of the shared skeleton.

    FGSMATModel    FGSM-AT: zero start, one step of eps (Goodfellow et al., 2015)
    RSFGSMModel    RS-FGSM: uniform start, one step of 1.25 eps (Wong et al., 2020)
    NFGSMModel     N-FGSM: uniform noise of 2 eps, one step of eps, no projection (de Jorge et al., 2022)
    PGDATModel     PGD-AT: k steps of 2.5 eps / k from a uniform start (Madry et al., 2018)
    TRADESModel    TRADES: CE(x) + beta * KL(f(x) || f(x')), KL inner maximization (Zhang et al., 2019)
    GradAlignModel FGSM-AT + lam * (1 - cos(grad l(x), grad l(x + eta))) (Andriushchenko & Flammarion, 2020)
"""

import keras
import tensorflow as tf

from seat_tf import attacks, losses
from seat_tf.training.base import AdversarialModel


class _SignedGradientAT(AdversarialModel):
    """Shared shape of FGSM-AT, RS-FGSM, N-FGSM and PGD-AT: maximize cross-entropy with the
    engine, then minimize the cross-entropy of the adversarial batch."""

    def __init__(self, classifier, epsilon=8 / 255, steps=1, rel_step_size=1.0, init="zero", init_radius_factor=1.0,
                 project=True, **kwargs):
        super().__init__(classifier, epsilon=epsilon, **kwargs)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}.")
        if rel_step_size <= 0:
            raise ValueError(f"rel_step_size must be > 0, got {rel_step_size}.")
        self.steps = int(steps)
        self.rel_step_size = float(rel_step_size)
        self.init = init
        self.init_radius_factor = float(init_radius_factor)
        self.project = bool(project)

    def get_config(self):
        config = super().get_config()
        config["rel_step_size"] = self.rel_step_size
        return config

    def perturb(self, x, y, epsilon, clean):
        return attacks.linf_attack(
            lambda x_adv: losses.cross_entropy(y, self.attack_logits(x_adv)),
            x,
            eps=epsilon,
            step_size=self.rel_step_size * epsilon,
            steps=self.steps,
            init=self.init,
            init_radius=self.init_radius_factor * epsilon,
            project_to_ball=self.project,
            seed=self.step_seed(),
        )

    def objective(self, x, y, x_adv, clean):
        adv_logits = self.classify(x_adv, training=True)
        return self.batch_mean(losses.cross_entropy(y, adv_logits)), {"adv_logits": adv_logits}


@keras.saving.register_keras_serializable(package="seat_tf")
class FGSMATModel(_SignedGradientAT):
    """FGSM-AT: x' = clip(x + eps * sign grad_x CE(x)). Cheapest; prone to catastrophic overfitting."""

    def __init__(self, classifier, epsilon=8 / 255, rel_step_size=1.0, **kwargs):
        super().__init__(classifier, epsilon, steps=1, rel_step_size=rel_step_size, init="zero", **kwargs)


@keras.saving.register_keras_serializable(package="seat_tf")
class RSFGSMModel(_SignedGradientAT):
    """RS-FGSM ("fast is better than free"): uniform start in the eps-ball, step 1.25 eps, projected."""

    def __init__(self, classifier, epsilon=8 / 255, rel_step_size=1.25, **kwargs):
        super().__init__(classifier, epsilon, steps=1, rel_step_size=rel_step_size, init="uniform", **kwargs)


@keras.saving.register_keras_serializable(package="seat_tf")
class NFGSMModel(_SignedGradientAT):
    """N-FGSM: uniform noise of radius noise_factor * eps (2), one step of eps, and by design
    no projection back to the eps-ball (the perturbation may reach 3 eps in L-inf)."""

    def __init__(self, classifier, epsilon=8 / 255, noise_factor=2.0, rel_step_size=1.0, **kwargs):
        super().__init__(classifier, epsilon, steps=1, rel_step_size=rel_step_size, init="uniform",
                         init_radius_factor=noise_factor, project=False, **kwargs)

    def get_config(self):
        config = super().get_config()
        config["noise_factor"] = self.init_radius_factor
        return config


@keras.saving.register_keras_serializable(package="seat_tf")
class PGDATModel(_SignedGradientAT):
    """PGD-AT: `steps` signed steps of 2.5 * eps / steps from a uniform start, projected."""

    def __init__(self, classifier, epsilon=8 / 255, steps=10, rel_step_size=None, **kwargs):
        rel_step_size = 2.5 / steps if rel_step_size is None else rel_step_size
        super().__init__(classifier, epsilon, steps=steps, rel_step_size=rel_step_size, init="uniform", **kwargs)

    def get_config(self):
        config = super().get_config()
        config["steps"] = self.steps
        return config


@keras.saving.register_keras_serializable(package="seat_tf")
class TRADESModel(AdversarialModel):
    """TRADES: minimize CE(f(x), y) + beta * KL(f(x) || f(x')), where x' maximizes the KL term
    by `steps` signed steps of rel_step_size * eps from x + 0.001 N(0, 1). beta=0 is clean training."""

    clean_pass = "value"
    logged_metrics = ("kl",)

    def __init__(self, classifier, epsilon=8 / 255, beta=6.0, steps=10, rel_step_size=0.25, **kwargs):
        super().__init__(classifier, epsilon=epsilon, **kwargs)
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}.")
        self.beta, self.steps, self.rel_step_size = float(beta), int(steps), float(rel_step_size)

    def get_config(self):
        config = super().get_config()
        config.update(beta=self.beta, steps=self.steps, rel_step_size=self.rel_step_size)
        return config

    @staticmethod
    def kl(clean_logits, adv_logits):
        """KL(softmax(clean) || softmax(adv)) per example."""
        clean_log_probs = tf.nn.log_softmax(clean_logits)
        return tf.reduce_sum(tf.exp(clean_log_probs) * (clean_log_probs - tf.nn.log_softmax(adv_logits)), axis=-1)

    def perturb(self, x, y, epsilon, clean):
        clean_logits = tf.stop_gradient(clean.logits)
        return attacks.linf_attack(
            lambda x_adv: self.kl(clean_logits, self.attack_logits(x_adv)),
            x, eps=epsilon, step_size=self.rel_step_size * epsilon, steps=self.steps, init="normal",
            seed=self.step_seed(),
        )

    def objective(self, x, y, x_adv, clean):
        adv_logits = self.classify(x_adv, training=True)
        kl = self.kl(clean.logits, adv_logits)
        loss = self.batch_mean(clean.loss) + self.beta * self.batch_mean(kl)
        return loss, {"adv_logits": adv_logits, "kl": kl}


@keras.saving.register_keras_serializable(package="seat_tf")
class GradAlignModel(AdversarialModel):
    """GradAlign: FGSM-AT (zero start, step eps) + lam * (1 - cos(grad_x l(x), grad_x l(x + eta))),
    eta ~ U(-eps, eps). The regularizer needs double backprop (about 3x FGSM-AT's cost)."""

    clean_pass = "differentiable_gradient"
    logged_metrics = ("grad_alignment",)

    def __init__(self, classifier, epsilon=8 / 255, lam=0.2, **kwargs):
        super().__init__(classifier, epsilon=epsilon, **kwargs)
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}.")
        self.lam = float(lam)

    def get_config(self):
        config = super().get_config()
        config["lam"] = self.lam
        return config

    @staticmethod
    def cosine(a, b):
        """Cosine similarity of flattened per-example gradients, shape [B]."""
        a = tf.reshape(a, [tf.shape(a)[0], -1])
        b = tf.reshape(b, [tf.shape(b)[0], -1])
        return tf.reduce_sum(a * b, -1) / (tf.norm(a, axis=-1) * tf.norm(b, axis=-1) + 1e-12)

    def perturb(self, x, y, epsilon, clean):
        # FGSM from x reuses the clean pass's input gradient: no extra pass.
        return tf.clip_by_value(x + epsilon * tf.sign(tf.stop_gradient(clean.grad)), 0.0, 1.0)

    def objective(self, x, y, x_adv, clean):
        adv_logits = self.classify(x_adv, training=True)
        eta = attacks.random_start(x, self.current_epsilon(), "uniform", seed=self.step_seed())
        x_noisy = tf.clip_by_value(x + eta, 0.0, 1.0)
        with tf.GradientTape() as tape:
            tape.watch(x_noisy)
            noisy_loss = losses.cross_entropy(y, self.classify(x_noisy, training=True))
        cos = self.cosine(clean.grad, tape.gradient(noisy_loss, x_noisy))
        loss = self.batch_mean(losses.cross_entropy(y, adv_logits)) + self.lam * self.batch_mean(1.0 - cos)
        return loss, {"adv_logits": adv_logits, "grad_alignment": cos}


