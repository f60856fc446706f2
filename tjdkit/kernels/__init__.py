"""Kernels chosen by measuring on the machine at hand (once, cached), never by a constant: the
large output layers (the model's, a head's decoder) of a decoding step, and the exact int8
screen for their argmax in greedy decoding (tjdkit.kernels.argmax)."""

from tjdkit.kernels.linear import KERNELS, choose_kernel, chosen_kernel, measured_output_kernel, output_layer

__all__ = ["KERNELS", "choose_kernel", "chosen_kernel", "measured_output_kernel", "output_layer"]
