"""The cyclic learning-rate schedule against its piecewise-linear definition (NumPy's interp)."""

import keras
import numpy as np
import pytest

from seat_tf.schedules import CyclicLR


@pytest.mark.parametrize("peak_fraction,start_lr,end_lr", [(0.4, 0.0, 0.0), (0.25, 0.01, 0.002), (0.5, 0.05, 0.1)])
def test_cyclic_lr_is_one_triangle_then_flat(peak_fraction, start_lr, end_lr):
    total, peak = 20, 0.2
    schedule = CyclicLR(peak, total_steps=total, peak_fraction=peak_fraction, start_lr=start_lr, end_lr=end_lr)
    steps = np.arange(0, total + 6)
    expected = np.interp(steps, [0, peak_fraction * total, total], [start_lr, peak, end_lr])  # flat past the end
    got = np.array([float(schedule(int(s))) for s in steps])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert got.max() == pytest.approx(peak)


def test_cyclic_lr_drives_an_optimizer_and_round_trips():
    schedule = CyclicLR(0.1, total_steps=10)
    optimizer = keras.optimizers.SGD(schedule)
    variable = keras.Variable(0.0)
    for _ in range(3):
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(-1.0), variable)])
    # Steps 0, 1, 2 of a rise to 0.1 at step 4: 0 + 0.025 + 0.05.
    assert float(variable.numpy()) == pytest.approx(0.075, abs=1e-6)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert [float(restored(s)) for s in range(12)] == pytest.approx([float(schedule(s)) for s in range(12)])


@pytest.mark.parametrize("kwargs,message", [(dict(total_steps=0), "total_steps"), (dict(peak_fraction=1.0), "peak_fraction"),
                                            (dict(peak_lr=0.0), "peak_lr")])
def test_cyclic_lr_rejects_bad_settings(kwargs, message):
    settings = {**dict(peak_lr=0.1, total_steps=10), **kwargs}
    with pytest.raises(ValueError, match=message):
        CyclicLR(**settings)
