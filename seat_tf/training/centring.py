"""Training the classifier's first layer as if its input were centred, without changing it.

A classifier whose first convolution or dense layer sees raw pixels in [0, 1] (Fashion-MNIST:
mean 0.29) trains measurably less robust than the same classifier with the mean subtracted in
the model (README, "SEAT on your own classifier": subtracting the mean alone closes the gap).
The cause is the optimization, not the function class: for z = W x + b the weight gradient
sum(g_z x^T) carries the input's mean in every example, correlated with the bias gradient.

`FirstLayerCentring` reparametrizes that layer as b = c - W m (m the input's channel means) and
lets the optimizer train (W, c) instead of (W, b). The function is untouched (z = W x + b at
every step, the classifier stays the user's own), but the gradients are those of the centred
layer z = W (x - m) + c:

    dL/dW |_c = g_W - m g_b^T        dL/dc = g_b

and after the optimizer moves W by dW (and c by what it computes for g_b), b follows c:
b_new = b_old + dc - dW^T m, i.e. the optimizer's bias update minus dW^T m. With a "valid"
convolution or a dense layer this is exactly training the centred classifier; a zero-padded
convolution differs at the image border only (its padding stays black, as in the raw model).
"""

import numpy as np
import tensorflow as tf

CENTRING_MODES = ("auto", "off")


def check_centring(value):
    """`first_layer_centring` as given: "auto", "off", or per-channel means (a sequence)."""
    if isinstance(value, str):
        if value not in CENTRING_MODES:
            raise ValueError(f"first_layer_centring must be 'auto', 'off' or a sequence of channel means, got {value!r}.")
        return value
    try:
        means = [float(v) for v in value]
    except TypeError:
        raise ValueError(f"first_layer_centring must be 'auto', 'off' or a sequence of channel means, "
                         f"got {value!r}.") from None
    if not means or not all(np.isfinite(means)):
        raise ValueError(f"first_layer_centring: channel means must be finite numbers, got {value!r}.")
    return tuple(means)


def centrable_layer(layer):
    """True for the layers whose kernel is [..., inputs, outputs] applied to the input's last
    axis with a bias: Dense and ungrouped channels-last Conv1D/2D/3D."""
    import keras

    if getattr(layer, "bias", None) is None or not getattr(layer, "trainable", False):
        return False
    if isinstance(layer, keras.layers.Dense):
        return True
    convs = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
    return isinstance(layer, convs) and layer.groups == 1 and layer.data_format == "channels_last"


class FirstLayerCentring:
    """The reparametrization b = c - W m of one layer (see the module docstring)."""

    def __init__(self, layer, mean):
        inputs = int(layer.kernel.shape[-2])
        mean = np.asarray(mean, np.float32).reshape(-1)
        if mean.size == 1:
            mean = np.full([inputs], mean[0], np.float32)
        if mean.size != inputs:
            raise ValueError(f"first_layer_centring: {mean.size} channel means for layer {layer.name!r}, "
                             f"which has {inputs} input channels.")
        self.layer = layer
        self.mean = mean

    def _column(self, dtype):
        return tf.constant(self.mean.reshape(-1, 1), dtype)  # [inputs, 1], broadcasts over [..., in, out]

    def _centred_gradients(self, grads, kernel, bias):
        """grads with the kernel's gradient (at position `kernel`) replaced by that of the
        centred layer."""
        grads = list(grads)
        if grads[kernel] is not None and grads[bias] is not None:
            grads[kernel] = grads[kernel] - self._column(grads[kernel].dtype) * grads[bias]
        return grads

    def bias_shift(self, kernel_before):
        """-dW^T m: what the bias must add after the optimizer moved the kernel from
        `kernel_before`, so that b = c - W m keeps holding."""
        moved = tf.convert_to_tensor(self.layer.kernel) - kernel_before
        return -tf.reduce_sum(moved * self._column(moved.dtype), axis=tf.range(tf.rank(moved) - 1))

    def apply(self, optimizer, grads, variables, strategy):
        """optimizer.apply with the centred layer's gradients, then the bias follows c."""
        kernel, bias = self._indices(variables)
        if kernel is None:
            optimizer.apply(grads, variables)
            return
        kernel_before = tf.identity(tf.convert_to_tensor(self.layer.kernel))
        optimizer.apply(self._centred_gradients(grads, kernel, bias), variables)
        _add_to_variable(self.layer.bias, self.bias_shift(kernel_before), strategy)

    def _indices(self, variables):
        """Positions of the layer's kernel and bias in `variables` (None if either is frozen)."""
        ids = [id(v) for v in variables]
        kernel, bias = id(self.layer.kernel), id(self.layer.bias)
        if kernel not in ids or bias not in ids:
            return None, None
        return ids.index(kernel), ids.index(bias)


def _add_to_variable(variable, delta, strategy):
    """variable += delta from a train step, through the strategy as Keras' optimizers update
    (every replica computed the same delta from the synchronized kernel)."""
    target = getattr(variable, "value", variable)  # the tf.Variable under a Keras variable, as Keras passes it

    def update(distribution, value):
        distribution.extended.update(target, lambda var, d: var.assign_add(d), args=(value,), group=False)

    tf.__internal__.distribute.interim.maybe_merge_call(update, strategy, delta)
