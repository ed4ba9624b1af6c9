"""CRNN: convolutional blocks → bidirectional LSTM/GRU → linear head (Shi et al., 2016)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from recognizer.models.base import Recognizer
from recognizer.models.norm import MaskedBatchNorm


def width_mask(lengths: Tensor, width: int) -> Tensor:
    """``(B, 1, 1, W)`` float mask that is 1 on the first ``lengths[b]`` columns."""
    cols = torch.arange(width, device=lengths.device)
    return (cols.unsqueeze(0) < lengths.unsqueeze(1)).float()[:, None, None, :]


class ConvBlock(nn.Module):
    """3×3 conv → BatchNorm → ReLU → (optional) max-pool; padded columns are zeroed afterwards,
    so that a sample gives the same output alone or padded in a batch.

    The BatchNorm takes its training statistics from the valid columns only
    (:class:`~recognizer.models.norm.MaskedBatchNorm`), so in training too a sample's output does
    not depend on how much padding its batch has (its width beside others, the bucketing).
    """

    def __init__(self, in_channels: int, out_channels: int, pool: tuple[int, int]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm = MaskedBatchNorm(out_channels)  # state_dict keys of nn.BatchNorm2d
        self.act = nn.ReLU(inplace=True)
        self.pool_hw = (int(pool[0]), int(pool[1]))
        self.pool = nn.MaxPool2d(self.pool_hw) if self.pool_hw != (1, 1) else nn.Identity()

    def output_lengths(self, lengths: Tensor) -> Tensor:
        k = self.pool_hw[1]
        return torch.div(lengths - k, k, rounding_mode="floor") + 1 if k > 1 else lengths

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        mask = width_mask(lengths, x.size(-1))  # (B, 1, 1, W)
        x = self.act(self.norm(self.conv(x), mask)) * mask
        x = self.pool(x)
        lengths = self.output_lengths(lengths)
        return x * width_mask(lengths, x.size(-1)), lengths


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each ``(B, T, F)`` sequence within its length; padding stays at the end (zeros)."""
    t = x.size(1)
    index = lengths.unsqueeze(1) - 1 - torch.arange(t, device=x.device)  # (B, T)
    valid = (index >= 0).unsqueeze(-1)
    index = index.clamp(min=0).unsqueeze(-1).expand_as(x)
    return torch.gather(x, 1, index) * valid


class BiRNN(nn.Module):
    """Bidirectional LSTM/GRU that is exact under right padding, without packed sequences.

    The forward direction is causal, so right padding cannot reach the valid frames; the backward
    direction runs forward over each sequence reversed within its length. Both use the fused
    (unpacked) kernels, about twice as fast on CPU as ``pack_padded_sequence``.
    """

    def __init__(self, input_size: int, hidden: int, layers: int, rnn_type: str, dropout: float) -> None:
        super().__init__()
        rnn_cls = {"lstm": nn.LSTM, "gru": nn.GRU}.get(rnn_type)
        if rnn_cls is None:
            raise ValueError(f"rnn_type must be 'lstm' or 'gru', got {rnn_type!r}")
        sizes = [input_size] + [2 * hidden] * (layers - 1)
        self.fwd = nn.ModuleList(rnn_cls(n, hidden, batch_first=True) for n in sizes)
        self.bwd = nn.ModuleList(rnn_cls(n, hidden, batch_first=True) for n in sizes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """``(B, T, F)`` → ``(B, T, 2 * hidden)``; frames at or beyond ``lengths`` are zero."""
        mask = (torch.arange(x.size(1), device=x.device).unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1)
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # oneDNN has no bf16 LSTM/GRU on many CPUs: keep the recurrent layers in fp32 there.
            with torch.autocast("cpu", enabled=False):
                return self._run(x.float(), lengths, mask)
        return self._run(x, lengths, mask)

    def _run(self, x: Tensor, lengths: Tensor, mask: Tensor) -> Tensor:
        for i, (fwd, bwd) in enumerate(zip(self.fwd, self.bwd)):
            if i > 0:
                x = self.dropout(x)
            forward, _ = fwd(x)
            backward, _ = bwd(reverse_padded(x, lengths))
            x = torch.cat([forward, reverse_padded(backward, lengths)], dim=-1) * mask
        return x


class CRNN(Recognizer):
    """Convolutional recurrent network for line images or spectrograms (time as width).

    Args:
        num_classes: ``C`` = charset + blank; derived from the alphabet at instantiation.
        height: input height in pixels (or mel bins); must be divisible by the product of the
            pooling heights.
        in_channels: input channels (1 for grayscale or spectrograms).
        channels: output channels of each convolutional block.
        pools: ``(height, width)`` max-pool of each block; the width product is the time
            subsampling factor.
        rnn_type: ``"lstm"`` or ``"gru"``.
        rnn_hidden: hidden size per direction.
        rnn_layers: stacked bidirectional layers.
        dropout: dropout before the recurrent layers and the head.
        channels_last: run the convolutional blocks in NHWC memory layout (1.3× faster training
            steps on CPU, measured in docs/training.md, "Speed per step on CPU"; same results).
    """

    bf16_on_cpu = False  # its LSTMs stay fp32 under CPU autocast: bf16 measured no faster (docs/scale.md)

    def __init__(
        self,
        num_classes: int,
        height: int,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64),
        pools: Sequence[Sequence[int]] = ((2, 2), (2, 2), (2, 1)),
        rnn_type: str = "lstm",
        rnn_hidden: int = 128,
        rnn_layers: int = 2,
        dropout: float = 0.2,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.channels_last = channels_last
        if len(channels) != len(pools):
            raise ValueError(f"one pool per conv block: {len(channels)} channels, {len(pools)} pools")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (blank + a symbol), got {num_classes}")
        pool_h = 1
        for p in pools:
            pool_h *= int(p[0])
        if height % pool_h:
            raise ValueError(
                f"height {height} is not divisible by the product of pooling heights {pool_h}: "
                "change the data height or the model's pools"
            )
        self.num_classes = num_classes
        self.height = height
        blocks, c_in = [], in_channels
        for c_out, pool in zip(channels, pools):
            blocks.append(ConvBlock(c_in, int(c_out), (int(pool[0]), int(pool[1]))))
            c_in = int(c_out)
        self.blocks = nn.ModuleList(blocks)
        self.min_width = 1
        for p in pools:
            self.min_width *= int(p[1])
        features = c_in * (height // pool_h)
        self.dropout = nn.Dropout(dropout)
        self.rnn = BiRNN(features, rnn_hidden, rnn_layers, rnn_type, dropout)
        self.head = nn.Linear(2 * rnn_hidden, num_classes)
        self.reset_parameters()
        if channels_last:  # weights too: with NHWC inputs and NCHW weights oneDNN reorders every step
            self.blocks.to(memory_format=torch.channels_last)

    def reset_parameters(self) -> None:
        """Kaiming for convolutions (ReLU), Xavier/orthogonal for the recurrent and head weights."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for name, p in self.rnn.named_parameters():
            if "weight_ih" in name:
                nn.init.xavier_uniform_(p)
            elif "weight_hh" in name:
                nn.init.orthogonal_(p)
            elif "bias" in name:
                nn.init.zeros_(p)

    def output_lengths(self, input_lengths: Tensor) -> Tensor:
        """Exact number of output frames for inputs of ``input_lengths`` columns."""
        lengths = input_lengths.long()
        for block in self.blocks:
            assert isinstance(block, ConvBlock)
            lengths = block.output_lengths(lengths)
        return lengths.clamp(min=0)

    def forward(self, inputs: Tensor, input_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Map ``(B, C_in, H, W)`` inputs with ``(B,)`` widths to ``(B, T, C)`` logits and ``(B,)`` lengths."""
        x, lengths = inputs, input_lengths.long()
        if self.channels_last:  # oneDNN's convolutions, pools and norms are faster on NHWC on CPU
            x = x.contiguous(memory_format=torch.channels_last)
        if x.size(-1) < self.min_width:  # too narrow to pool: pad (masked; lengths stay exact)
            x = nn.functional.pad(x, (0, self.min_width - x.size(-1)))
        for block in self.blocks:
            x, lengths = block(x, lengths)
        x = self.dropout(rearrange(x, "b c h w -> b w (c h)"))  # (B, T, features)
        y = self.rnn(x, lengths)  # (B, T, 2 * hidden)
        return self.head(self.dropout(y)), lengths  # (B, T, C), (B,)
