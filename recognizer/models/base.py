"""The contract every recognition model keeps (see DESIGN.md, section 2)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn


class Recognizer(nn.Module):
    """A CTC recognition model.

    ``forward(inputs (B, C, H, W), input_lengths (B,))`` returns ``(logits (B, T, num_classes),
    output_lengths (B,))``; ``output_lengths`` maps input widths to output frames exactly and without
    a forward pass, so the audit can check CTC feasibility of a whole data set before training.
    ``num_classes`` = charset + blank (id 0), derived from the alphabet at instantiation.
    """

    num_classes: int
    #: Whether bf16 autocast trains this model faster than fp32 on a CPU with native bf16, as measured
    #: (docs/scale.md, "Model throughput"); ``trainer.precision=auto`` on such a CPU then picks bf16-mixed.
    bf16_on_cpu: ClassVar[bool] = False

    def output_lengths(self, input_lengths: Tensor) -> Tensor:
        raise NotImplementedError
