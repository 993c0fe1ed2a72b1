"""TinyViT image encoders in the layouts of the released light SAMs.

Two releases share one TinyViT-5M trunk (stages 64 / 128 / 160 / 320 wide with 2 / 2 / 6 / 2
blocks: inverted-residual convolutions in the first stage; windowed attention with learned
relative-position biases, a depthwise "local" convolution and an MLP in the others) and
differ in the patch embedding:

- LiteMedSAM (`lite_medsam.pth`): two 1x1 convolutions, no down-sampling; 256 px input,
  stages at 256, 128, 64, 64 px.
- MobileSAM (`mobile_sam.pt`, also micro-sam's `vit_t` / `vit_t_lm`): two 3x3 stride-2
  convolutions; 1024 px input, stages at 256, 128, 64, 64 px. The file also holds TinyViT's
  ImageNet classifier (`norm_head`, `head`), unused by SAM: kept as buffers, so the file
  loads strictly and nothing untrained sits among the parameters.

The merge before the last stage keeps the resolution, so both give a 320 x 64 x 64 pre-neck
map (`features`, what CellFinder reads) and, through SAM's neck, the 256 x 64 x 64 image
embedding. Module and parameter names are those of the released files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as checkpoint_block


@dataclass(frozen=True)
class TinyViTConfig:
    """Architecture constants of one released TinyViT encoder."""

    patch_kernel: int  # kernel of both patch-embedding convolutions
    patch_stride: int  # stride of each of them (the embedding down-samples by its square)
    classifier_head: bool  # the released file keeps TinyViT's ImageNet head
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)  # of the attention stages 1-3 (stage 0: unused)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)  # likewise
    mlp_ratio: float = 4.0
    mbconv_expand: float = 4.0
    local_conv: int = 3
    head_classes: int = 1000

    @property
    def stride(self) -> int:
        """Input pixels per side of one output cell: the patch embedding, then two stride-2
        merges (the last merge keeps the resolution)."""
        return self.patch_stride**2 * 4

    @property
    def channels(self) -> int:
        """Width of the pre-neck map."""
        return self.embed_dims[-1]

    def build(self, image_size: int, out_chans: int) -> TinyViT:
        return TinyViT(self, image_size, out_chans)


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that always normalises with its running statistics, as in eval mode.

    The released statistics stay fixed when the trunk trains on a few images per batch (DETR
    freezes its backbone's the same way), and a frozen trunk gives the same features in
    train and eval mode. Weight and bias still train; the state-dict keys are BatchNorm2d's.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            False, 0.0, self.eps)


class ConvBN(nn.Sequential):
    """Convolution without bias, then batch norm (`c`, `bn` as in the released files)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 bn_weight: float = 1.0) -> None:
        super().__init__()
        self.c = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = FrozenBatchNorm2d(cout)
        nn.init.constant_(self.bn.weight, bn_weight)


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(3, dim // 2, kernel, stride), nn.GELU(),
                                 ConvBN(dim // 2, dim, kernel, stride))

    def forward(self, x: Tensor) -> Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project; `[B, C, H, W]`."""

    def __init__(self, dim: int, expand: float) -> None:
        super().__init__()
        hidden = int(dim * expand)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim, bn_weight=0.0)  # each block starts as the identity
        self.act1, self.act2, self.act3 = nn.GELU(), nn.GELU(), nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(x + self.conv3(y))


class PatchMerging(nn.Module):
    """1x1 widen, 3x3 depthwise (stride 2, or 1 before the last stage), 1x1; `[B, C, H, W]`."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))


class WindowAttention(nn.Module):
    """Attention inside one `w x w` window with a learned bias per head and per offset
    `(|dy|, |dx|)` between two tokens; `[B', w*w, C]`.

    The fused `qkv` projection holds, per head, its query, key and value slices side by side.
    `kind` is `"standard"` (explicit softmax) or `"sdpa"` (`scaled_dot_product_attention`
    with the bias as its mask): same parameters, same results.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.kind = "standard"
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        # Token t = (t // w, t % w); the released files number offset (dy, dx) as dy * w + dx.
        t = torch.arange(window * window)
        r, c = t // window, t % window
        index = (r[:, None] - r[None]).abs() * window + (c[:, None] - c[None]).abs()
        self.register_buffer("bias_index", index, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.transpose(1, 2).split(self.head_dim, dim=-1)  # [B', heads, N, d] each
        bias = self.attention_biases[:, self.bias_index]  # [heads, N, N]
        if self.kind == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype),
                                                 scale=self.scale)
        else:
            out = ((q @ k.transpose(-2, -1)) * self.scale + bias).softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention, depthwise local convolution, MLP; `[B, H, W, C]`."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float,
                 local_conv: int) -> None:
        super().__init__()
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.local_conv = ConvBN(dim, dim, local_conv, groups=dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        ws = self.window
        pad_b, pad_r = -h % ws, -w % ws
        # Zero padding to whole windows; padded tokens take part in attention (as released).
        y = F.pad(x, (0, 0, 0, pad_r, 0, pad_b)) if pad_b or pad_r else x
        nh, nw = (h + pad_b) // ws, (w + pad_r) // ws
        y = y.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        y = self.attn(y).view(b, nh, nw, ws, ws, c).transpose(2, 3)
        x = x + y.reshape(b, nh * ws, nw * ws, c)[:, :h, :w]
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class Stage(nn.Module):
    """Blocks at one resolution, then an optional merge; `[B, C, H, W]` in and out (the
    attention blocks run channels-last)."""

    def __init__(self, blocks: list[nn.Module], downsample: nn.Module | None,
                 channels_last: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample
        self.channels_last = channels_last

    def forward(self, x: Tensor, recompute: bool = False) -> Tensor:
        if self.channels_last:
            x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = checkpoint_block(block, x, use_reentrant=False) if recompute else block(x)
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        return x if self.downsample is None else self.downsample(x)


class UnusedWeights(nn.Module):
    """Tensors a released file holds for a part SAM does not use, as buffers (no gradient,
    no optimiser state), so that the file loads strictly and saves back the same."""

    def __init__(self, **shapes: tuple[int, ...]) -> None:
        super().__init__()
        for name, shape in shapes.items():
            self.register_buffer(name, torch.zeros(shape))


class TinyViT(nn.Module):
    """TinyViT trunk and SAM neck: `[B, 3, S, S]` -> `[B, out_chans, S/stride, S/stride]`.

    `features` gives the pre-neck map `[B, 320, S/stride, S/stride]`. Any `S` that is a
    multiple of the stride works with the same weights (no position embedding; the windows
    pad). `activation_checkpointing` recomputes each block in the backward pass.
    """

    def __init__(self, cfg: TinyViTConfig, img_size: int, out_chans: int = 256) -> None:
        super().__init__()
        if img_size % cfg.stride:
            raise ValueError(f"image_size {img_size} is not a multiple of the TinyViT "
                             f"stride {cfg.stride}")
        self.img_size = img_size
        self.activation_checkpointing = False
        dims = cfg.embed_dims
        self.patch_embed = PatchEmbed(dims[0], cfg.patch_kernel, cfg.patch_stride)
        last = len(dims) - 1
        layers = []
        for i, (dim, depth) in enumerate(zip(dims, cfg.depths)):
            if i == 0:
                blocks = [MBConv(dim, cfg.mbconv_expand) for _ in range(depth)]
            else:
                blocks = [TinyViTBlock(dim, cfg.num_heads[i], cfg.window_sizes[i], cfg.mlp_ratio,
                                       cfg.local_conv) for _ in range(depth)]
            merge = None if i == last else PatchMerging(dim, dims[i + 1], 1 if i + 1 == last else 2)
            layers.append(Stage(blocks, merge, channels_last=i > 0))
        self.layers = nn.ModuleList(layers)
        if cfg.classifier_head:
            self.norm_head = UnusedWeights(weight=(dims[-1],), bias=(dims[-1],))
            self.head = UnusedWeights(weight=(cfg.head_classes, dims[-1]),
                                      bias=(cfg.head_classes,))
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )
        for m in self.modules():  # TinyViT's init (convolutions keep PyTorch's)
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def set_attention(self, kind: str) -> None:
        """`"standard"` or `"sdpa"` in every attention block (see `WindowAttention`)."""
        for m in self.modules():
            if isinstance(m, WindowAttention):
                m.kind = kind

    def features(self, x: Tensor) -> Tensor:
        """Normalised images `[B, 3, S, S]` -> pre-neck map `[B, 320, S/stride, S/stride]`."""
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x, recompute)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.neck(self.features(x))


#: The two released layouts (their keys and shapes are those of the files).
LITE_MEDSAM = TinyViTConfig(patch_kernel=1, patch_stride=1, classifier_head=False)
MOBILE_SAM = TinyViTConfig(patch_kernel=3, patch_stride=2, classifier_head=True)
