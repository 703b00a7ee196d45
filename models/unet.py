"""The ADM UNet and its noisy-image classifier (Dhariwal & Nichol, 2021).

Module and parameter names follow guided-diffusion's ``unet.py`` one for one, so the public
checkpoints load with ``strict=True`` as they are. The constructors differ in one point:
``attention_resolutions`` are feature-map sizes (32, 16, 8), as on guided-diffusion's command line,
not downsample rates. Attention runs through ``scaled_dot_product_attention``, which computes the
same softmax(qkᵀ/√d)v as the reference einsums with less memory traffic.
"""

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: [cos | sin], as the reference."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups. Half-precision inputs are normalised in float32, as the reference
    does, because fp16 statistics over large groups lose precision."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x):
        if x.dtype == torch.float16:
            return super().forward(x.float()).to(x.dtype)
        return super().forward(x)


def _param_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of a module's first parameter. Mixed-precision inference (``models.fast``) stores the
    blocks in 16 bits and the embedding and output head in float32; inputs are cast to match."""
    return next(module.parameters()).dtype


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.detach().zero_()
    return module


class TimestepBlock(nn.Module):
    """A module whose forward also takes the timestep embedding."""

    def forward(self, x, emb):
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """Sequential that hands the embedding to the children that want it."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then optionally a 3×3 conv (parameter name ``conv``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """Stride-2 3×3 conv or 2×2 average pool (both named ``op``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None):
        super().__init__()
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x):
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the embedding, optionally resampling (BigGAN style)."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: Optional[int] = None,
                 use_conv: bool = False, use_scale_shift_norm: bool = False, up: bool = False,
                 down: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
                                        zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = nn.Conv2d(channels, out_channels, 3, padding=1)
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb):
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


def qkv_attention(qkv: torch.Tensor, num_heads: int, legacy_order: bool) -> torch.Tensor:
    """Multi-head attention over a packed (B, 3·H·C, L) tensor; returns (B, H·C, L).

    ``legacy_order`` splits heads first, then q/k/v (guided-diffusion's QKVAttentionLegacy);
    otherwise q/k/v first, then heads (its QKVAttention, used by the 64×64 model and pooling).
    """
    b, width, length = qkv.shape
    ch = width // (3 * num_heads)
    if legacy_order:
        q, k, v = qkv.reshape(b, num_heads, 3, ch, length).unbind(2)
    else:
        q, k, v = qkv.reshape(b, 3, num_heads, ch, length).unbind(1)
    out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
    return out.transpose(-1, -2).reshape(b, num_heads * ch, length)


def _num_heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    if num_head_channels == -1:
        return num_heads
    if channels % num_head_channels:
        raise ValueError(f"{channels} channels are not divisible by num_head_channels={num_head_channels}")
    return channels // num_head_channels


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions, with a residual connection."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_new_attention_order: bool = False):
        super().__init__()
        self.num_heads = _num_heads(channels, num_heads, num_head_channels)
        self.legacy_order = not use_new_attention_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = qkv_attention(self.qkv(self.norm(x)), self.num_heads, self.legacy_order)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling: the mean token attends to all positions."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads_channels: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spacial_dim ** 2 + 1) / embed_dim ** 0.5)
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim, 1)
        self.num_heads = embed_dim // num_heads_channels

    def forward(self, x):
        b, c = x.shape[:2]
        x = x.reshape(b, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = qkv_attention(self.qkv_proj(x), self.num_heads, legacy_order=False)
        return self.c_proj(x)[:, :, 0]


def _build_encoder(model: nn.Module, in_channels: int, model_channels: int, num_res_blocks: int,
                   attention_ds: Sequence[int], dropout: float, channel_mult: Sequence[float],
                   conv_resample: bool, num_heads: int, num_head_channels: int,
                   use_scale_shift_norm: bool, resblock_updown: bool, use_new_attention_order: bool,
                   num_classes: Optional[int] = None):
    """Build ``time_embed``, ``label_emb``, ``input_blocks`` and ``middle_block`` (shared by both
    networks), in the reference's order so that state_dicts list their keys alike.

    Returns the channels of every input block (for the skips) and the final downsample rate.
    """
    emb_dim = model_channels * 4
    model.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
    if num_classes is not None:
        model.label_emb = nn.Embedding(num_classes, emb_dim)
    ch = int(channel_mult[0] * model_channels)
    model.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
    chans, ds = [ch], 1

    def attention(c):
        return AttentionBlock(c, num_heads, num_head_channels, use_new_attention_order)

    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            layers = [ResBlock(ch, emb_dim, dropout, int(mult * model_channels),
                               use_scale_shift_norm=use_scale_shift_norm)]
            ch = int(mult * model_channels)
            if ds in attention_ds:
                layers.append(attention(ch))
            model.input_blocks.append(TimestepEmbedSequential(*layers))
            chans.append(ch)
        if level != len(channel_mult) - 1:
            down = (ResBlock(ch, emb_dim, dropout, ch, use_scale_shift_norm=use_scale_shift_norm, down=True)
                    if resblock_updown else Downsample(ch, conv_resample, ch))
            model.input_blocks.append(TimestepEmbedSequential(down))
            chans.append(ch)
            ds *= 2
    model.middle_block = TimestepEmbedSequential(
        ResBlock(ch, emb_dim, dropout, use_scale_shift_norm=use_scale_shift_norm),
        attention(ch),
        ResBlock(ch, emb_dim, dropout, use_scale_shift_norm=use_scale_shift_norm))
    return chans, ds


def _attention_rates(image_size: int, attention_resolutions: Sequence[int]) -> set:
    """Feature-map sizes (32, 16, 8) → downsample rates, as guided-diffusion's script converts them."""
    rates = set()
    for res in attention_resolutions:
        if res <= 0 or image_size % res:
            raise ValueError(f"attention resolution {res} does not divide image_size {image_size}")
        rates.add(image_size // res)
    return rates


class UNetModel(nn.Module):
    """The ADM noise-prediction UNet: ``model(x, t, y) -> (B, out_channels, H, W)``.

    With ``out_channels = 2 * in_channels`` (learned σ) the first half of the output is ε.
    """

    def __init__(self, image_size: int, in_channels: int = 3, model_channels: int = 128,
                 out_channels: int = 6, num_res_blocks: int = 2, attention_resolutions: Sequence[int] = (),
                 dropout: float = 0.0, channel_mult: Sequence[float] = (1, 2, 4, 8), conv_resample: bool = True,
                 num_classes: Optional[int] = None, num_heads: int = 1, num_head_channels: int = -1,
                 num_heads_upsample: int = -1, use_scale_shift_norm: bool = False,
                 resblock_updown: bool = False, use_new_attention_order: bool = False):
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.image_size, self.in_channels, self.out_channels = image_size, in_channels, out_channels
        self.model_channels, self.num_classes = model_channels, num_classes
        attention_ds = _attention_rates(image_size, attention_resolutions)
        emb_dim = model_channels * 4
        chans, ds = _build_encoder(self, in_channels, model_channels, num_res_blocks, attention_ds, dropout,
                                   channel_mult, conv_resample, num_heads, num_head_channels,
                                   use_scale_shift_norm, resblock_updown, use_new_attention_order, num_classes)
        ch = chans[-1]
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + chans.pop(), emb_dim, dropout, int(model_channels * mult),
                                   use_scale_shift_norm=use_scale_shift_norm)]
                ch = int(model_channels * mult)
                if ds in attention_ds:
                    layers.append(AttentionBlock(ch, num_heads_upsample, num_head_channels, use_new_attention_order))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, emb_dim, dropout, ch, use_scale_shift_norm=use_scale_shift_norm, up=True)
                                  if resblock_updown else Upsample(ch, conv_resample, ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(),
                                 zero_module(nn.Conv2d(int(channel_mult[0] * model_channels), out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if (y is None) != (self.num_classes is None):
            raise ValueError("pass class labels y if and only if the model is class-conditional")
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if y is not None:
            emb = emb + self.label_emb(y)
        h, skips = x.to(_param_dtype(self.input_blocks)), []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.to(_param_dtype(self.out)))


class EncoderUNetModel(nn.Module):
    """The UNet's encoder half with a pooling head: the noisy classifier, ``clf(x, t) -> logits``."""

    def __init__(self, image_size: int, in_channels: int = 3, model_channels: int = 128,
                 out_channels: int = 1000, num_res_blocks: int = 2, attention_resolutions: Sequence[int] = (),
                 dropout: float = 0.0, channel_mult: Sequence[float] = (1, 2, 4, 8), conv_resample: bool = True,
                 num_heads: int = 1, num_head_channels: int = -1, use_scale_shift_norm: bool = False,
                 resblock_updown: bool = False, use_new_attention_order: bool = False, pool: str = "adaptive"):
        super().__init__()
        self.image_size, self.in_channels, self.out_channels = image_size, in_channels, out_channels
        self.model_channels, self.pool = model_channels, pool
        attention_ds = _attention_rates(image_size, attention_resolutions)
        chans, ds = _build_encoder(self, in_channels, model_channels, num_res_blocks, attention_ds, dropout,
                                   channel_mult, conv_resample, num_heads, num_head_channels,
                                   use_scale_shift_norm, resblock_updown, use_new_attention_order)
        ch = chans[-1]
        if pool == "adaptive":
            self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)),
                                     zero_module(nn.Conv2d(ch, out_channels, 1)), nn.Flatten())
        elif pool == "attention":
            if num_head_channels == -1:
                raise ValueError("pool='attention' needs num_head_channels")
            self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(),
                                     AttentionPool2d(image_size // ds, ch, num_head_channels, out_channels))
        else:
            raise ValueError(f"unknown pool {pool!r}: use 'adaptive' or 'attention' (the public classifiers "
                             "use 'attention')")

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        h = x.to(_param_dtype(self.input_blocks))
        for block in self.input_blocks:
            h = block(h, emb)
        return self.out(self.middle_block(h, emb).to(_param_dtype(self.out)))
