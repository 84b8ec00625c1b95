"""Model FLOPs of training, counted on real tokens (padding is not work the model needed), and the
peak of the GPU, for TFLOP/s and MFU (model FLOPs utilisation) in the log and in bench/.

Per text of n tokens, a forward pass costs 2 FLOPs per matmul weight per token (the layers' linear
maps, and MEL's r' x d projection) plus attention's two n x n x width products per layer (4 n^2 d);
training is three forward passes' worth (the backward pass costs two). Lookups (embeddings) and
element-wise work are not counted, as in the usual MFU convention (PaLM, appendix B).
"""

from __future__ import annotations

import torch
from torch import nn

# Dense bf16 tensor-core peaks (no sparsity), from the vendors' data sheets; matched in order against
# torch.cuda.get_device_name(), the more specific names first.
PEAK_BF16 = [
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
]


def gpu_peak(device: torch.device) -> tuple[str, float | None]:
    """The device's name and its bf16 peak FLOP/s (None when unknown, e.g. a CPU)."""
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, next((peak for key, peak in PEAK_BF16 if key in name), None)


class FlopCounter:
    """Training FLOPs of a backbone for given token counts."""

    def __init__(self, layers: nn.Module, width: int, num_layers: int):
        self.matmul = 2 * sum(p.numel() for p in layers.parameters() if p.ndim == 2)  # per token, forward
        self.attention = 4 * num_layers * width  # per token per token of context, forward
        self.width = width

    def training(self, tokens: int, squares: int, mel_rank: int | None = None) -> float:
        """FLOPs to train on texts of `tokens` tokens in all, whose lengths' squares sum to `squares`."""
        per_token = self.matmul + (2 * mel_rank * self.width if mel_rank else 0)
        return 3.0 * (per_token * tokens + self.attention * squares)
