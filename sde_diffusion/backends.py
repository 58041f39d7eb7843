"""Numerical settings of PyTorch's CUDA back ends that change results: TF32.

On NVIDIA GPUs since Ampere, PyTorch may compute float32 matrix products and convolutions in TF32
(10-bit mantissa); for cuDNN convolutions that is PyTorch's default. A U-Net solve then differs
from the CPU result by far more than float32 rounding (docs/scale.md). ``set_tf32(False)`` (CLI
``--no-tf32``) asks for IEEE float32 instead. No effect on the CPU.
"""

from __future__ import annotations

import torch

__all__ = ["set_tf32", "tf32_state"]


def set_tf32(on: bool) -> dict:
    """TF32 for float32 matmuls and cuDNN convolutions on or off; returns the settings made.

    Uses the ``fp32_precision`` API where this torch has it (recent releases refuse mixing it with
    the legacy ``allow_tf32`` flags), else the legacy flags."""
    mode = "tf32" if on else "ieee"
    if hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(torch.backends.cudnn, "conv"):
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
        return {"api": "fp32_precision", "matmul": mode, "cudnn.conv": mode}
    torch.backends.cuda.matmul.allow_tf32 = bool(on)
    torch.backends.cudnn.allow_tf32 = bool(on)
    return {"api": "allow_tf32", "matmul": bool(on), "cudnn": bool(on)}


def tf32_state() -> dict:
    """The current TF32 settings (for the records that outputs keep)."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(torch.backends.cudnn, "conv"):
        return {"matmul": torch.backends.cuda.matmul.fp32_precision, "cudnn.conv": torch.backends.cudnn.conv.fp32_precision}
    return {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
