"""Learning-rate schedules used by the paper's recipes."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="seat_tf")
class CyclicLR(keras.optimizers.schedules.LearningRateSchedule):
    """One triangular cycle: linear from `start_lr` up to `peak_lr` at `peak_fraction` of
    `total_steps`, then linear down to `end_lr` (the "cyclic" schedule of fast adversarial
    training, Wong et al. 2020, which SEAT uses). Steps past the end stay at `end_lr`."""

    def __init__(self, peak_lr, total_steps, peak_fraction=0.4, start_lr=0.0, end_lr=0.0):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
        if not 0.0 < peak_fraction < 1.0:
            raise ValueError(f"peak_fraction must lie in (0, 1), got {peak_fraction}.")
        if peak_lr <= 0:
            raise ValueError(f"peak_lr must be > 0, got {peak_lr}.")
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.peak_fraction = float(peak_fraction)
        self.start_lr = float(start_lr)
        self.end_lr = float(end_lr)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        peak_step = self.peak_fraction * self.total_steps
        rising = self.start_lr + (self.peak_lr - self.start_lr) * step / peak_step
        falling_progress = tf.minimum(1.0, (step - peak_step) / (self.total_steps - peak_step))
        falling = self.peak_lr + (self.end_lr - self.peak_lr) * falling_progress
        return tf.where(step < peak_step, rising, falling)

    def get_config(self):
        return {
            "peak_lr": self.peak_lr,
            "total_steps": self.total_steps,
            "peak_fraction": self.peak_fraction,
            "start_lr": self.start_lr,
            "end_lr": self.end_lr,
        }
