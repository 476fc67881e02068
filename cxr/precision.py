"""Which numeric precision a training run uses (shared by the classifier engine, the UNet and the detector).

The rule is written once so that every model card can say truthfully what it was trained in:
mixed bf16 on a CPU only where the CPU computes bf16 natively (AVX512-BF16 / AMX; elsewhere it is
emulated and slower than fp32), bf16 or fp16 mixed on a GPU.
"""

from __future__ import annotations

import os

import torch

#: ``CXR_CPU_BF16=0`` makes a bf16 CPU behave as one without it (fp32 everywhere ``auto`` decides), e.g. to
#: measure what an AVX2-only machine gets (bench/dag.py --isa avx2); ``1`` forces bf16 on (emulated if absent).
ENV_BF16 = "CXR_CPU_BF16"


def cpu_has_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512-BF16 / AMX), so bf16 autocast is faster, not emulated
    (``$CXR_CPU_BF16`` = 0 / 1 overrides the detection)."""
    forced = os.environ.get(ENV_BF16, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def precision_for(precision: str, accelerator: str, convolutional: bool = True) -> str:
    """Lightning precision for ``train.precision``.

    ``auto`` -> on a GPU bf16-mixed where supported, else 16-mixed; on a CPU, for convolutional image
    models, bf16-mixed when the CPU has native bf16 (:func:`cpu_has_bf16`: about 1.6x faster for
    densenet121 at 128 px here), else 32-true (the small matrix products of the region models gain
    nothing from bf16 on a CPU; a model with ``cpu_bf16 = False`` stays in fp32 too). Mixed precision keeps fp32 master weights and computes the loss in fp32
    (:func:`masked_bce`).
    """
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if precision == "auto":
        if not on_gpu:
            return "bf16-mixed" if convolutional and cpu_has_bf16() else "32-true"
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}[precision]
