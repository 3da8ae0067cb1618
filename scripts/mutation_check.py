"""Plants one bug at a time in the training and evaluation maths and checks that the tests catch it.

Each mutant is an exact text substitution in one file of seat_tf (a sign flipped, a term
dropped, a wrong reduction); the script copies the checkout to a temporary folder, applies
the mutant there, runs the tests that should catch it, and records "caught" (the tests fail)
or "MISSED" (they pass: a hole in the tests). The checkout itself is never modified.

The mutants cover the training maths (losses, SEAT, the baselines, ELLE, the L-inf engine)
and the robustness evaluation: APGD's schedule and APGD-T's targets (apgd_), Square, MI-FGSM
and composites (suite_), FAB-T (fab_), the protocol's per-example worst case, sweeps and
report (eval_) and the diagnostics (diag_); the classifiers (models_), the data pipeline and
input checks (data_) and the replica-independent random draws (random_).

    python scripts/mutation_check.py                      # every mutant, JSON lines to stdout
    python scripts/mutation_check.py --only=seat_,elle_ --out=mutants.jsonl
    python scripts/mutation_check.py --list

Exit status 1 if any mutant was missed or no longer applies (its text changed: update it).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MATHS_TESTS = ("tests/test_seat_maths.py", "tests/test_losses.py", "tests/test_baselines_maths.py",
               "tests/test_elle.py")
TWO_REPLICAS = ("tests/test_distribute.py::test_batch_reduction_attack_takes_the_global_batch_sign_under_two_replicas",
                "tests/test_distribute.py::test_mirrored_step_equals_single_device_step")
ATTACKS = MATHS_TESTS + ("tests/test_attacks.py",)
WEIGHTS = ("tests/test_fail_loudly.py::test_every_method_logs_the_weighted_mean_objective",
           "tests/test_fail_loudly.py::test_integer_weights_train_like_repeated_examples_and_class_weight_works")

LOSSES, SEAT, BASE = "seat_tf/losses.py", "seat_tf/training/seat.py", "seat_tf/training/base.py"
BASELINES, ELLE, ENGINE = "seat_tf/training/baselines.py", "seat_tf/training/elle.py", "seat_tf/attacks/engine.py"
SUITE, REGISTRY, FAB = "seat_tf/attacks/suite.py", "seat_tf/attacks/registry.py", "seat_tf/attacks/fab.py"
PROTOCOL, RUNNER = "seat_tf/evaluation/protocol.py", "seat_tf/evaluation/runner.py"
SANITY, REPORT = "seat_tf/evaluation/sanity.py", "seat_tf/evaluation/report.py"
MEASURE, MONITORS = "seat_tf/diagnostics/measure.py", "seat_tf/diagnostics/monitors.py"
SCHEDULES, GUARD = "seat_tf/schedules.py", "seat_tf/diagnostics/guard.py"
NORM, SMALL_CNN = "seat_tf/models/normalization.py", "seat_tf/models/small_cnn.py"
PREACT, DATA = "seat_tf/models/preact_resnet.py", "seat_tf/data.py"
VALIDATION, RANDOMNESS = "seat_tf/validation.py", "seat_tf/attacks/randomness.py"
CENTRING = "seat_tf/training/centring.py"
CENTRING_TESTS = ("tests/test_centring.py",)

# The evaluation side: each group runs in well under a minute.
SUITE_TESTS = ("tests/test_attack_suite.py",)
FAB_TESTS = ("tests/test_fab.py",)
EVAL_TESTS = ("tests/test_evaluation.py::test_robust_accuracy_is_the_per_example_worst_case_over_attacks",
              "tests/test_evaluation.py::test_eps_sweep_is_the_closed_form_accuracy_at_each_eps",
              "tests/test_evaluation.py::test_report_table_shows_the_per_example_worst_case",
              "tests/test_evaluation.py::test_attack_orderings_on_a_trained_model",
              "tests/test_evaluation.py::test_composite_of_attacks_already_run_is_their_conjunction",
              "tests/test_evaluation.py::test_subsets_limits_and_bad_input",
              "tests/test_evaluation.py::test_report_files_with_eps_sweep", "tests/test_sanity_checks.py")
DIAG_TESTS = ("tests/test_diagnostics.py",)
SCHEDULE_TESTS = ("tests/test_schedules.py",)
MODEL_TESTS = ("tests/test_models.py",)
DATA_TESTS = ("tests/test_data.py",
              "tests/test_fail_loudly.py::test_fit_evaluate_and_seat_tf_evaluate_refuse_labels_outside_the_models_classes",
              "tests/test_fail_loudly.py::test_loaders_check_labels_and_images_whole",
              "tests/test_layout.py::test_one_eps_rule_everywhere")

# (name, file, text, replacement[, tests]): the text must occur exactly once in the file.
MUTANTS = [
    # First-layer centring: the reparametrization's gradient, the bias that follows c, SEAT's
    # default and auto's threshold.
    ("centring_gradient_sign", CENTRING, "grads[kernel] - self._column", "grads[kernel] + self._column", CENTRING_TESTS),
    ("centring_bias_not_shifted", CENTRING, "self.bias_shift(kernel_before), strategy)",
     "0.0 * self.bias_shift(kernel_before), strategy)", CENTRING_TESTS),
    ("centring_bias_shift_sign", CENTRING, "return -tf.reduce_sum(moved", "return tf.reduce_sum(moved", CENTRING_TESTS),
    ("centring_shift_by_new_kernel", CENTRING, "moved = tf.convert_to_tensor(self.layer.kernel) - kernel_before",
     "moved = tf.convert_to_tensor(self.layer.kernel)", CENTRING_TESTS),
    ("centring_auto_ignores_threshold", BASE, '"auto" and stats is not None and is_uncentred(stats[1], stats[2])',
     '"auto" and stats is not None', CENTRING_TESTS),
    ("seat_default_centring_off", SEAT, 'kwargs.setdefault("first_layer_centring", "auto")',
     'kwargs.setdefault("first_layer_centring", "off")', CENTRING_TESTS),
    # (Not a mutant: the bias update as a plain assign_add in replica context. Every replica adds
    # the same delta, and under TF 2.21 that gave the same weights as the strategy's update: the
    # mirrored-step tests pass with it. The code keeps the strategy's update, as Keras' optimizer
    # does, so it does not depend on how a variable aggregates.)
    # A hard-coded lam, the residual's reductions and inputs inside the attack, the warm-up's eps
    # reaching the attack, the flood level under replicas, the fourth CO rule's direction.
    ("seat_objective_lam_hardcoded", SEAT, "+ self.lam * linearity", "+ 0.5 * linearity"),
    ("seat_attack_lam_hardcoded", SEAT, "return self._attack_score(y, logits) + lam * linearity",
     "return self._attack_score(y, logits) + 0.5 * linearity"),
    ("losses_residual_mean_not_sum", LOSSES, "directional = tf.reduce_sum(delta * grad_clean, axis=axes)",
     "directional = tf.reduce_mean(delta * grad_clean, axis=axes)"),
    ("seat_attack_residual_drops_gradient", SEAT,
     "residual = losses.linearity_residual(losses.cross_entropy(y, logits), clean.loss, x_adv - x, clean.grad)",
     "residual = losses.linearity_residual(losses.cross_entropy(y, logits), clean.loss, x_adv - x, 0.0 * clean.grad)"),
    ("seat_attack_residual_drops_clean_loss", SEAT,
     "residual = losses.linearity_residual(losses.cross_entropy(y, logits), clean.loss, x_adv - x, clean.grad)",
     "residual = losses.linearity_residual(losses.cross_entropy(y, logits), 0.0 * clean.loss, x_adv - x, clean.grad)"),
    ("base_warmup_off_by_one", BASE, "self.optimizer.iterations + 1, tf.float32", "self.optimizer.iterations, tf.float32",
     MATHS_TESTS + ("tests/test_training.py::test_epsilon_warmup_ramps_linearly",)),
    ("base_attack_ignores_warmup", BASE, "x_adv = tf.stop_gradient(self.perturb(x, y, epsilon, clean))",
     "x_adv = tf.stop_gradient(self.perturb(x, y, self.epsilon, clean))",
     MATHS_TESTS + ("tests/test_training.py::test_every_methods_training_attack_follows_the_warmup_eps",)),
    ("base_flood_level_per_replica", BASE, "+ level / _num_replicas()", "+ level", MATHS_TESTS + TWO_REPLICAS),
    ("diag_masking_gap_direction", MONITORS, "pgd - blackbox > max_masking_gap", "blackbox - pgd > max_masking_gap",
     DIAG_TESTS),
    ("diag_train_gap_direction", MONITORS, "train - pgd > max_train_gap", "pgd - train > max_train_gap", DIAG_TESTS),
    ("losses_margin_min_other", LOSSES, "best_other = tf.reduce_max(", "best_other = tf.reduce_min("),
    ("losses_ce_on_probs", LOSSES, "labels=labels, logits=_as_float32(logits))", "labels=labels, logits=tf.nn.softmax(_as_float32(logits)))"),
    ("losses_true_class_mask", LOSSES, "num_classes) > 0.5", "num_classes) < 0.5"),
    ("losses_margin_sign", LOSSES, "return best_other - true_score", "return true_score - best_other"),
    ("losses_margin_probs_log", LOSSES, "scores = tf.nn.softmax(scores, axis=-1)",
     "scores = tf.nn.log_softmax(scores, axis=-1)"),
    ("losses_dlr_denominator", LOSSES, "(top3[:, 0] - top3[:, 2] + 1e-12)", "(top3[:, 0] - top3[:, 1] + 1e-12)"),
    ("losses_targeted_dlr_denominator", LOSSES, "0.5 * (top4[:, 2] + top4[:, 3])", "0.5 * (top4[:, 1] + top4[:, 3])"),
    ("losses_margin_masks_true_with_zero", LOSSES, "tf.fill(tf.shape(scores), -float(\"inf\"))",
     "tf.zeros_like(scores)", ATTACKS),
    ("losses_dlr_numerator_sign", LOSSES, "return -(true_score - best_other) / (top3", "return (true_score - best_other) / (top3",
     ATTACKS),
    ("losses_targeted_dlr_numerator_swapped", LOSSES, "-(z_true - z_target) / (top4", "-(z_target - z_true) / (top4",
     ATTACKS),
    ("losses_flood_drops_level", LOSSES, "return tf.abs(mean_loss - level) + level", "return tf.abs(mean_loss - level)"),
    ("losses_flood_sign", LOSSES, "return tf.abs(mean_loss - level) + level", "return tf.abs(mean_loss + level) - level"),
    ("losses_residual_sign", LOSSES, "tf.cast(loss_clean, tf.float32) - directional",
     "tf.cast(loss_clean, tf.float32) + directional"),
    ("losses_residual_batch_sum", LOSSES, "tf.reduce_sum(delta * grad_clean, axis=axes)",
     "tf.reduce_sum(delta * grad_clean)"),
    ("losses_residual_drops_clean", LOSSES, "tf.cast(loss_perturbed, tf.float32) - tf.cast(loss_clean, tf.float32)",
     "tf.cast(loss_perturbed, tf.float32)"),
    ("losses_error_squared", LOSSES, "return tf.abs(linearity_residual(", "return tf.square(linearity_residual("),
    ("seat_attack_lam_sign", SEAT, "self._attack_score(y, logits) + lam * linearity",
     "self._attack_score(y, logits) - lam * linearity"),
    ("seat_attack_drops_linearity", SEAT, "self._attack_score(y, logits) + lam * linearity",
     "self._attack_score(y, logits)"),
    ("seat_attack_delta_sign", SEAT, "clean.loss, x_adv - x, clean.grad)", "clean.loss, x - x_adv, clean.grad)"),
    ("seat_attack_ce_not_margin", SEAT, "return self._attack_score(y, logits) + lam",
     "return losses.cross_entropy(y, logits) + lam"),
    ("seat_attack_ignores_attack_lam", SEAT, "return self.lam if self.variant.attack_lam is None else self.variant.attack_lam",
     "return self.lam"),
    ("seat_skips_the_clean_gradient_with_lam", SEAT, 'return "gradient" if self.lam > 0 or self.attack_lam > 0 else "value"',
     'return "gradient" if self.lam > 0 else "value"',
     MATHS_TESTS + ("tests/test_training.py::test_seat_without_the_term_skips_the_clean_gradient_and_trains_the_same",)),
    ("seat_attack_half_step", SEAT, "variant.rel_step_size * epsilon", "0.5 * variant.rel_step_size * epsilon"),
    ("seat_attack_ignores_steps", SEAT, "steps=variant.attack_steps", "steps=1"),
    ("seat_attack_ignores_init", SEAT, "init=variant.init,", "init='zero',"),
    ("seat_attack_batch_sign_local", SEAT, "residual * tf.sign(self.global_mean(residual))",
     "residual * tf.sign(residual)", MATHS_TESTS + TWO_REPLICAS),
    ("seat_objective_delta", SEAT, "clean_loss, x_adv - x, clean.grad)", "clean_loss, x_adv, clean.grad)"),
    ("seat_objective_drops_lam", SEAT, "+ self.lam * linearity", "+ linearity"),
    ("seat_objective_drops_flood", SEAT, "self.flooded_mean(adv_loss, self.flood_level)", "self.batch_mean(adv_loss)"),
    ("seat_objective_clean_gradient_inverted", SEAT,
     "clean.loss if variant.clean_loss_gradient else tf.stop_gradient(clean.loss)",
     "tf.stop_gradient(clean.loss) if variant.clean_loss_gradient else clean.loss"),
    ("seat_objective_adv_at_clean", SEAT, "adv_logits = self.classify(x_adv, training=True)\n        adv_loss",
     "adv_logits = self.classify(x, training=True)\n        adv_loss"),
    ("seat_objective_batch_reduction_per_example", SEAT, "linearity = self.abs_of_batch_mean(residual)",
     "linearity = self.batch_mean(error)"),
    ("seat_objective_clip_max", SEAT, "tf.minimum(error, variant.linearity_clip)",
     "tf.maximum(error, variant.linearity_clip)"),
    ("base_clean_grad_sign", BASE, "grad = tf.stop_gradient(input_gradient(input_tape, loss, logits, x))",
     "grad = tf.stop_gradient(-input_gradient(input_tape, loss, logits, x))"),
    ("base_abs_mean_ignores_offset", BASE, "sign = tf.sign(global_mean - offset)", "sign = tf.sign(global_mean)"),
    ("base_weights_ignored", BASE, "tf.reduce_sum(weights * values)", "tf.reduce_sum(values)", MATHS_TESTS + WEIGHTS),
    ("base_batch_mean_local", BASE, "return tf.reduce_sum(values) / self._global_batch_size(values)",
     "return tf.reduce_mean(values)", MATHS_TESTS + TWO_REPLICAS),
    ("base_warmup_unbounded", BASE, "self.epsilon * tf.minimum(1.0, progress)", "self.epsilon * progress",
     MATHS_TESTS + ("tests/test_training.py::test_epsilon_warmup_ramps_linearly",)),
    ("baselines_pgd_step", BASELINES, "rel_step_size = 2.5 / steps if", "rel_step_size = 2.5 if"),
    ("baselines_trades_kl_order", BASELINES, "kl = self.kl(clean.logits, adv_logits)",
     "kl = self.kl(adv_logits, clean.logits)"),
    ("baselines_trades_drops_beta", BASELINES, "+ self.beta * self.batch_mean(kl)", "+ self.batch_mean(kl)"),
    ("baselines_gradalign_cos_sign", BASELINES, "self.batch_mean(1.0 - cos)", "self.batch_mean(cos)"),
    ("baselines_nfgsm_projects", BASELINES, "init_radius_factor=noise_factor, project=False",
     "init_radius_factor=noise_factor, project=True"),
    ("baselines_rs_fgsm_step", BASELINES, "epsilon=8 / 255, rel_step_size=1.25", "epsilon=8 / 255, rel_step_size=1.0"),
    ("baselines_fgsm_random_start", BASELINES, "rel_step_size=rel_step_size, init=\"zero\", **kwargs",
     "rel_step_size=rel_step_size, init=\"uniform\", **kwargs"),
    ("baselines_nfgsm_noise_radius_eps", BASELINES, "init_radius_factor=noise_factor, project=False",
     "init_radius_factor=1.0, project=False"),
    ("baselines_at_objective_on_clean", BASELINES,
     "adv_logits = self.classify(x_adv, training=True)\n        return self.batch_mean",
     "adv_logits = self.classify(x, training=True)\n        return self.batch_mean"),
    ("baselines_trades_zero_start", BASELINES, "steps=self.steps, init=\"normal\"", "steps=self.steps, init=\"zero\""),
    ("baselines_trades_step_eps", BASELINES, "step_size=self.rel_step_size * epsilon, steps=self.steps",
     "step_size=epsilon, steps=self.steps"),
    ("baselines_trades_natural_term_adversarial", BASELINES, "loss = self.batch_mean(clean.loss) + self.beta",
     "loss = self.batch_mean(losses.cross_entropy(y, adv_logits)) + self.beta"),
    ("baselines_trades_kl_weights_adv", BASELINES, "tf.reduce_sum(tf.exp(clean_log_probs) *",
     "tf.reduce_sum(tf.exp(tf.nn.log_softmax(adv_logits)) *"),
    ("baselines_gradalign_drops_lam", BASELINES, "+ self.lam * self.batch_mean(1.0 - cos)", "+ self.batch_mean(1.0 - cos)"),
    ("baselines_gradalign_half_radius_noise", BASELINES, "attacks.random_start(x, self.current_epsilon(), \"uniform\"",
     "attacks.random_start(x, 0.5 * self.current_epsilon(), \"uniform\""),
    ("baselines_gradalign_cosine_norm", BASELINES, "(tf.norm(a, axis=-1) * tf.norm(b, axis=-1) + 1e-12)",
     "(tf.norm(a, axis=-1) ** 2 + 1e-12)"),
    ("baselines_gradalign_half_fgsm", BASELINES, "x + epsilon * tf.sign(tf.stop_gradient(clean.grad))",
     "x + 0.5 * epsilon * tf.sign(tf.stop_gradient(clean.grad))"),
    ("baselines_gradalign_clean_grad_constant", BASELINES, "clean_pass = \"differentiable_gradient\"\n    logged_metrics = (\"grad_alignment\",)",
     "clean_pass = \"gradient\"\n    logged_metrics = (\"grad_alignment\",)"),
    ("seat_clean_pass_ignores_double_backprop", SEAT,
     "if self.variant.double_backprop:\n            return \"differentiable_gradient\"", "if False:\n            pass"),
    ("diag_switch_without_retrace", GUARD, "self.model.make_train_function(force=True)\n                self.switched_epoch",
     "self.switched_epoch", DIAG_TESTS),
    ("schedule_rises_over_all_steps", SCHEDULES, "(self.peak_lr - self.start_lr) * step / peak_step",
     "(self.peak_lr - self.start_lr) * step / self.total_steps", SCHEDULE_TESTS),
    ("schedule_falls_over_all_steps", SCHEDULES, "(step - peak_step) / (self.total_steps - peak_step))",
     "(step - peak_step) / self.total_steps)", SCHEDULE_TESTS),
    ("schedule_no_floor_after_end", SCHEDULES, "tf.minimum(1.0, (step - peak_step) / (self.total_steps - peak_step))",
     "(step - peak_step) / (self.total_steps - peak_step)", SCHEDULE_TESTS),
    ("engine_projection_radius", ENGINE, "tf.clip_by_value(x_adv - x, -eps, eps)",
     "tf.clip_by_value(x_adv - x, -2 * eps, 2 * eps)", ATTACKS),
    ("engine_no_box_clip", ENGINE, "return tf.clip_by_value(x_adv, 0.0, 1.0)\n\n\ndef _values", "return x_adv\n\n\ndef _values",
     ATTACKS),
    ("engine_gradient_not_sign", ENGINE, "x_adv + self.step_size * tf.sign(grad)", "x_adv + self.step_size * grad",
     ATTACKS),
    ("engine_descends", ENGINE, "x_adv + self.step_size * tf.sign(grad)", "x_adv - self.step_size * tf.sign(grad)",
     ATTACKS),
    ("engine_corner_is_uniform", ENGINE, "return tf.sign(global_batch_noise(_uniform, shape, seed)) * radius",
     "return global_batch_noise(_uniform, shape, seed) * radius", ATTACKS),
    ("engine_uniform_half_radius", ENGINE, "return global_batch_noise(_uniform, shape, seed) * radius",
     "return global_batch_noise(_uniform, shape, seed) * radius * 0.5", ATTACKS),
    ("engine_keep_worst_prefers_lower", ENGINE, "((s_cand == s_best) & (v_cand > v_best))",
     "((s_cand == s_best) & (v_cand < v_best))", ATTACKS),
    ("base_clean_pass_inference_mode", BASE, "logits = self.classify(x, training=True)\n                loss = losses",
     "logits = self.classify(x, training=False)\n                loss = losses"),
    ("base_attack_ignores_attack_training", BASE, "self.input_gradient_logits(training=self.attack_training)(x)",
     "self.input_gradient_logits(training=True)(x)"),
    ("seat_objective_inference_mode", SEAT, "adv_logits = self.classify(x_adv, training=True)\n        adv_loss",
     "adv_logits = self.classify(x_adv, training=False)\n        adv_loss"),
    ("seat_attack_signed_residual", SEAT, "linearity = tf.abs(residual)\n            return",
     "linearity = residual\n            return"),
    ("seat_objective_error_signed", SEAT, "error = tf.abs(residual)\n", "error = residual\n"),
    ("elle_chord_point", ELLE, "x_c = (1.0 - a) * x_a + a * x_b", "x_c = a * x_a + (1.0 - a) * x_b"),
    ("elle_chord_weights", ELLE, "return loss_c - (1.0 - a) * loss_a - a * loss_b",
     "return loss_c - 0.5 * loss_a - 0.5 * loss_b"),
    ("elle_gap_not_squared", ELLE, "squared_gap = tf.square(self.chord_gap(x, y))",
     "squared_gap = tf.abs(self.chord_gap(x, y))"),
    ("elle_spike_ignores_std", ELLE, "error > mean + self.sensitivity * std", "error > mean"),
    ("elle_no_decay", ELLE, "self.current_lam * self.decay", "self.current_lam"),
    ("elle_welford_m2", ELLE, "m2 = self.error_m2 + delta * (error - mean)", "m2 = self.error_m2 + delta * delta"),
    # -- robustness evaluation: APGD, the rest of the suite, FAB-T, the protocol, diagnostics --
    ("apgd_checkpoint_off_by_one", SUITE, "interval[w] = float(w - previous)", "interval[w - 1] = float(w - previous)",
     SUITE_TESTS),
    ("apgd_eta_starts_at_eps", SUITE, "eta=tf.fill([batch], 2.0 * self.eps)", "eta=tf.fill([batch], self.eps)",
     SUITE_TESTS),
    ("apgd_momentum_dropped", SUITE, "alpha = tf.where(first, 1.0, self.alpha)", "alpha = 1.0", SUITE_TESTS),
    ("apgd_oscillation_inverted", SUITE, 's["increases"] < self.rho * interval',
     's["increases"] >= self.rho * interval', SUITE_TESTS),
    ("apgd_restart_not_from_best", SUITE,
     'x_adv = tf.where(to_best, s["x_max"], x_adv)\n        grad = tf.where(to_best, s["g_max"], grad)\n        x_prev',
     "x_prev", SUITE_TESTS),
    ("apgd_restart_zeroes_momentum", SUITE, 'x_prev = s["x_prev"]  # a restart', 'x_prev = tf.where(to_best, s["x_max"], s["x_prev"])  # a restart',
     SUITE_TESTS),
    ("apgd_keep_best_skips_last", ENGINE, "return keep_worst(best, evaluate(x_adv))[0]", "return best[0]",
     SUITE_TESTS),
    ("apgd_t_dlr_target_swapped", SUITE, "losses.targeted_dlr_loss(targets, y, logits)",
     "losses.targeted_dlr_loss(y, targets, logits)", SUITE_TESTS),
    ("apgd_t_skips_last_target", SUITE, "last = min(self.targets, num_classes - 1)",
     "last = min(self.targets, num_classes - 2)", SUITE_TESTS),
    ("apgd_t_last_target_wins", SUITE, "return k + 1, engine.keep_worst(best, result)", "return k + 1, result",
     SUITE_TESTS),
    ("suite_square_skips_clip", SUITE,
     "candidate = engine.project(tf.where(window, x_act + eps * sign, best_act), x_act, eps)\n            m_new",
     "candidate = tf.where(window, x_act + eps * sign, best_act)\n            m_new", SUITE_TESTS),
    ("suite_composite_reattacks_fooled", REGISTRY, "index = tf.where(correct)[:, 0]",
     "index = tf.where(tf.ones_like(correct))[:, 0]", SUITE_TESTS),
    ("suite_mifgsm_drops_momentum", ENGINE, "velocity = self.momentum * velocity + _l1_normalize(grad)",
     "velocity = _l1_normalize(grad)", SUITE_TESTS + ("tests/test_attacks.py",)),
    ("fab_projection_ignores_gap_sign", FAB, "direction = tf.sign(normal) * tf.sign(gap)[:, None]",
     "direction = tf.sign(normal)", FAB_TESTS),
    ("fab_alpha_toward_far", FAB, "divide_no_nan(near, near + far)", "divide_no_nan(far, near + far)", FAB_TESTS),
    ("fab_keeps_last_not_closest", FAB, "closer = fooled & (norm < best_norm)", "closer = fooled", FAB_TESTS),
    ("eval_worst_case_any_attack", PROTOCOL, "worst[: correct.size] & correct[: worst.size]",
     "worst[: correct.size] | correct[: worst.size]", EVAL_TESTS),
    ("eval_worst_case_mean", PROTOCOL, "worst[: correct.size] & correct[: worst.size]",
     "(worst[: correct.size] + correct[: worst.size]) / 2", EVAL_TESTS),
    ("eval_composite_ignores_earlier_stages", PROTOCOL, "correct = correct & np.concatenate(member.correct)[:n]",
     "correct = clean[:n] & np.concatenate(member.correct)[:n]", EVAL_TESTS),
    ("eval_attacks_clean_wrong", RUNNER, "index = np.flatnonzero(correct[i])", "index = np.arange(correct[i].size)",
     EVAL_TESTS),
    ("eval_robust_over_clean_correct", SANITY, '"robust_accuracy": float(correct.mean()),',
     '"robust_accuracy": float(correct.sum() / max(clean.sum(), 1)),', EVAL_TESTS),
    ("eval_report_worst_is_min", REPORT, "f\"{result['worst_case_accuracy']:.4f} | |\")",
     "f\"{min(e['robust_accuracy'] for e in result['attacks'].values()):.4f} | |\")", EVAL_TESTS),
    ("eval_sweep_at_main_eps", PROTOCOL, 'Entry(key, attack, value, None, "sweep")',
     'Entry(key, attack, main[0].eps, None, "sweep")', EVAL_TESTS),
    ("diag_linearity_delta_sign", MEASURE, "clean, x_adv - x, grad)", "clean, x - x_adv, grad)", DIAG_TESTS),
    ("diag_co_best_is_previous", MONITORS,
     'self._best_pgd = max(record["pgd_accuracy"], -1.0 if self._best_pgd is None else self._best_pgd)',
     'self._best_pgd = record["pgd_accuracy"]', DIAG_TESTS),
    ("diag_co_gap_direction", MONITORS, "fgsm - pgd > max_gap", "pgd - fgsm > max_gap", DIAG_TESTS),
    ("diag_boundary_counts_wrong_at_eps", MEASURE, "float(np.mean(at_eps & wrong_inside))",
     "float(np.mean(wrong_inside))", DIAG_TESTS),
    # The classifiers: in-model standardization and PreActResNet18's wiring.
    ("models_std_as_variance", NORM, "variance=[s * s for s in std]", "variance=list(std)", MODEL_TESTS),
    ("models_small_cnn_ignores_mean", SMALL_CNN, "h = standardize(mean, std)(inputs)",
     "h = standardize([0.0] * len(mean), std)(inputs)", MODEL_TESTS),
    ("models_preact_shortcut_from_raw_input", PREACT, 'use_bias=False, name=f"{name}_shortcut")(out)',
     'use_bias=False, name=f"{name}_shortcut")(x)', MODEL_TESTS),
    ("models_preact_no_final_bn", PREACT, 'x = keras.layers.ReLU(name="final_relu")(_bn("final_bn")(x))',
     'x = keras.layers.ReLU(name="final_relu")(x)', MODEL_TESTS),
    ("models_preact_stage2_not_strided", PREACT, "stride = 2 if (stage > 0 and block == 0) else 1",
     "stride = 2 if (stage > 1 and block == 0) else 1", MODEL_TESTS),
    # Data: pixel scale, layouts, shuffling, and the input checks' bounds.
    ("data_tf_pixels_unscaled", DATA, "return tf.cast(image, tf.float32) / 255.0", "return tf.cast(image, tf.float32)",
     DATA_TESTS),
    ("data_numpy_pixels_unscaled", DATA, "images.astype(np.float32) / 255.0 if", "images.astype(np.float32) if",
     DATA_TESTS),
    ("data_cifar_rows_read_as_hwc", DATA, "data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)",
     "data.reshape(-1, 32, 32, 3)", DATA_TESTS),
    ("data_cifar_height_width_swapped", DATA, ".transpose(0, 2, 3, 1)", ".transpose(0, 3, 2, 1)", DATA_TESTS),
    ("data_shuffle_ignores_epoch", DATA, "tf.cast(epoch.read_value(), tf.int64)", "tf.constant(0, tf.int64)",
     DATA_TESTS),
    ("data_labels_equal_to_num_classes_pass", VALIDATION, "high >= num_classes", "high > num_classes", DATA_TESTS),
    ("data_eps_in_255_scale_passes", VALIDATION, "if eps > 1:", "if eps > 255:", DATA_TESTS),
    ("random_rows_offset_counts_own_rows", RANDOMNESS, "tf.reduce_sum(sizes[:replica])",
     "tf.reduce_sum(sizes[: replica + 1])", TWO_REPLICAS),
    ("random_rows_all_replicas_take_the_first", RANDOMNESS, "noise[start : start + shape[0]]", "noise[: shape[0]]",
     TWO_REPLICAS),
]


def tests_of(mutant):
    """The tests meant to catch a mutant: its own list, else the maths tests."""
    return mutant[4] if len(mutant) > 4 else MATHS_TESTS


def run_mutant(mutant, python, timeout):
    """Runs the mutant's tests on a mutated copy of the checkout (text None: unmutated); the
    record says caught or not."""
    name, path, text, replacement = mutant[:4]
    tests = tests_of(mutant)
    with tempfile.TemporaryDirectory(prefix="seat_mutant_") as tmp:
        for folder in ("seat_tf", "tests"):
            shutil.copytree(os.path.join(ROOT, folder), os.path.join(tmp, folder),
                            ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(os.path.join(ROOT, "setup.cfg"), tmp)
        target = os.path.join(tmp, path)
        source = open(target).read()
        if text is not None:
            if source.count(text) != 1:
                return dict(name=name, file=path, result="STALE", detail=f"text occurs {source.count(text)} times")
            open(target, "w").write(source.replace(text, replacement))
        started = time.time()
        env = dict(os.environ, PYTHONPATH=tmp, TF_CPP_MIN_LOG_LEVEL="3")
        try:
            proc = subprocess.run([python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                                  cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return dict(name=name, file=path, result="caught", detail="timeout", seconds=round(time.time() - started))
        failed = [line.split(" ")[1] for line in proc.stdout.splitlines() if line.startswith("FAILED ")]
        # Exit 1: tests failed (caught). 0: all passed (missed). Others: pytest could not run them.
        result = {0: "MISSED", 1: "caught"}.get(proc.returncode, f"ERROR (pytest exit {proc.returncode})")
        detail = failed[0] if failed else (proc.stdout.strip().splitlines() or [""])[-1]
        return dict(name=name, file=path, result=result, detail=detail, seconds=round(time.time() - started))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="Run the mutants whose name starts with one of these "
                        "comma-separated prefixes.")
    parser.add_argument("--out", default=None, help="Also append JSON lines to this file.")
    parser.add_argument("--list", action="store_true", help="List the mutants and exit.")
    parser.add_argument("--timeout", type=int, default=900, help="Seconds per mutant before it counts as caught.")
    args = parser.parse_args(argv)
    prefixes = tuple(args.only.split(","))
    chosen = [m for m in MUTANTS if m[0].startswith(prefixes)]
    if args.list:
        for mutant in chosen:
            print(f"{mutant[0]:48s} {mutant[1]}")
        return 0
    # The unmutated copy must pass every test used, or every mutant would look caught.
    all_tests = tuple(dict.fromkeys(t for m in chosen for t in tests_of(m)))
    baseline = run_mutant(("unmutated", SEAT, None, None, all_tests), sys.executable, args.timeout)
    if baseline["result"] != "MISSED":
        print(f"the unmutated checkout fails its tests ({baseline['detail']}); fix that first", file=sys.stderr)
        return 2
    bad = 0
    for mutant in chosen:
        record = run_mutant(mutant, sys.executable, args.timeout)
        line = json.dumps(record)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
        bad += record["result"] != "caught"
    print(f"{len(chosen) - bad}/{len(chosen)} mutants caught", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
