"""StyleGAN2-ADA: "Analyzing and Improving the Image Quality of StyleGAN", Tero Karras, Samuli Laine,
Miika Aittala, Janne Hellsten, Jaakko Lehtinen, Timo Aila, 2020. arXiv:1912.04958; with "Training
Generative Adversarial Networks with Limited Data", Tero Karras, Miika Aittala, Janne Hellsten,
Samuli Laine, Jaakko Lehtinen, Timo Aila, 2020. arXiv:2006.06676.

Paper -> code
- mapping network: pixel-normalised z (+ class embedding), 8 FC layers at lr x0.01, w_avg
  tracked for the truncation trick (StyleGAN sec. 2, 5.2)                       -> MappingNetwork
- equalised learning rate everywhere (Karras et al. 2018 sec. 4.1)              -> FC, Conv, SynthesisLayer
- modulated convolution with weight demodulation (StyleGAN2 sec. 2.2, eq. 1-3),
  per-layer noise with a learned strength, bias + leaky ReLU with gain sqrt(2)  -> SynthesisLayer
- skip generator: learned 4x4 constant, toRGB at every resolution, summed after
  FIR upsampling with [1,3,3,1] (StyleGAN2 sec. 4.1, fig. 7)                    -> SynthesisBlock, upfirdn2d
- residual D with FIR downsampling, minibatch std, conditional projection
  (StyleGAN2 sec. 4.1; Miyato & Koyama 2018 for the projection)                 -> DiscriminatorBlock, Discriminator
- non-saturating logistic loss; lazy R1 every 16 D steps; path length every
  4 G steps (weight 2, decay 0.01, batch / 2); style mixing with p 0.9; Adam
  (0, 0.99) with the lazy-regularisation lr/beta correction (StyleGAN2 sec. 3)  -> loss_d, loss_g, r1_penalty,
                                                                                   path_length_penalty, train()
- ADA 'bgc' pipeline: 12 transforms, each with probability p, on every image D
  sees, differentiable (ADA sec. 2.3, appendix B)                               -> augment
- adaptive p from r_t = E[sign(D(x_real))], target 0.6, 500 kimg from 0 to 1
  (ADA sec. 3)                                                                  -> ada_update, train()

Not from the paper
- Pure PyTorch, no custom CUDA ops: FIR filtering is a separable depthwise conv, the modulated
  conv is the official code's non-fused form (scale inputs, shared conv, scale outputs), the
  upsampling conv a transposed conv followed by the FIR filter, as in the official code.
- Geometric augmentation: reflection padding, 2x upsampling with the 'sym6' wavelet low-pass
  (12 taps), bilinear grid_sample, 2x downsampling with the same filter (the official choice).
  Images that draw no transform are passed through untouched, so p = 0 is exactly the identity
  (the official pipeline filters every image). p is clamped to [0, 1] (official: only >= 0).
- Gradients are averaged across processes by hand instead of DDP: DDP's hooks do not handle the
  double backward of R1 and path length, nor D's parameters frozen in the G step (stylegan3 does
  the same). pl_mean is per process, as in the official code; w_avg is rank 0's in checkpoints.
- --z-dim defaults to --w-dim (512 by default, as the paper); D's class mapping uses
  --map-layers layers (official: always 8). Fake images take the labels of the real batch.
- R1 gamma defaults to the official 'auto' config: 0.0002 * res^2 / batch (0.0256 at 64x64,
  batch 32); widths --cbase 16384 --cmax 512 and lr 0.0025 are that config's too.
- Noise inputs are random while training and fixed buffers in eval (official generate.py's
  'const'), so generate() is reproducible; generate() clamps to [-1, 1].
- Reduced precision (bf16 autocast by default on CUDA) only in the convolutions and FIR filters
  of blocks at >= max(res/8, 8) (the official num_fp16_res = 4), with the official clamp of
  activations to +-256; styles, demodulation, the RGB skip image, mapping, the 4x4 layers, the
  augmentation, R1 and path length run in fp32 (the last two eager even under --compile). Under
  fp16 the modulated conv pre-normalises weights and styles so it cannot overflow (official).
  EMA ramp-up: half-life min(10 kimg, 0.05 * images seen), copies buffers (w_avg).

Usage
    python stylegan2_ada.py                                   # built-in toy faces, 64x64, conditional
    python stylegan2_ada.py --data ../shared/data/anime64 --res 64
    python stylegan2_ada.py --data toy --res 32 --steps 200 --batch 8 --cbase 256 --cmax 16 --w-dim 32 --map-layers 2
    python stylegan2_ada.py --resume --steps 60000            # continue out/stylegan2_ada/ckpt.pt
    torchrun --nproc_per_node=4 stylegan2_ada.py --data ./faces
    python stylegan2_ada.py --sample out/stylegan2_ada/ckpt.pt --n 64 [--truncation 0.7] [--interp | --mixing]
"""

import argparse
import contextlib
import copy
import json
import math
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from common import (
    Batches,
    UserError,
    load_images,
    make_grid,
    plot_losses,
    save_gif,
    save_grid,
    save_progress_gif,
)

MODEL = "stylegan2_ada"
FIR = [1.0, 3.0, 3.0, 1.0]
SYM6 = [
    0.015404109327027373,
    0.0034907120842174702,
    -0.11799011114819057,
    -0.048311742585633,
    0.4910559419267466,
    0.787641141030194,
    0.3379294217276218,
    -0.07263752278646252,
    -0.021060292512300564,
    0.04472490177066578,
    0.0017677118642428036,
    -0.007800708325034148,
]


# --- model --------------------------------------------------------------------------------------


def check_res(res):
    if res < 32 or res > 1024 or res & (res - 1):
        raise UserError(f"{MODEL} builds power-of-two resolutions from 32 to 1024; got --res {res}")


def upfirdn2d(x, f, up=1, down=1, pad=(0, 0), gain=1.0):
    """Upsample by zero insertion, pad (negative = crop), convolve with the FIR filter f x f (f 1-D,
    normalised to sum 1; times `gain`), keep every down-th pixel: the official CUDA op in plain PyTorch."""
    B, C, H, W = x.shape
    if up > 1:
        x = F.pad(x.reshape(B, C, H, 1, W, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(
            B, C, H * up, W * up
        )
    f = (
        (torch.outer(f, f) * (gain / f.sum() ** 2)).flip([0, 1]).to(x.dtype)
    )  # flipped: a true convolution
    return F.conv2d(
        F.pad(x, [pad[0], pad[1], pad[0], pad[1]]), f.expand(C, 1, *f.shape), stride=down, groups=C
    )


def upsample2d(x, f):
    return upfirdn2d(x, f, up=2, pad=((len(f) + 1) // 2, (len(f) - 2) // 2), gain=4)


def downsample2d(x, f, crop=0):
    return upfirdn2d(x, f, down=2, pad=((len(f) - 1) // 2 - crop, (len(f) - 2) // 2 - crop))


def bias_act(x, b, act, gain=1.0, clamp=256.0):
    """Bias, leaky ReLU(0.2) with gain sqrt(2) (keeps unit variance), an extra gain, and the
    official clamp to +-256 that keeps reduced precision from overflowing."""
    if b is not None:
        x = x + b.view(1, -1, *[1] * (x.dim() - 2))
    x = F.leaky_relu(x, 0.2) * (math.sqrt(2) * gain) if act else x * gain if gain != 1 else x
    return x.clamp(-clamp * gain, clamp * gain)


def fp32_unless(amp, device_type):
    """Blocks below the 4 highest resolutions run in fp32 even under autocast (official num_fp16_res)."""
    return contextlib.nullcontext() if amp else torch.autocast(device_type, enabled=False)


def normalize_2nd_moment(x, eps=1e-8):
    return x * (x.square().mean(1, keepdim=True) + eps).rsqrt()


class FC(nn.Module):
    """Equalised-lr linear layer: N(0, 1) weights scaled by lr_mul / sqrt(fan_in) at run time, so
    Adam's step is the same for every layer; lr_mul 0.01 slows the mapping net (StyleGAN sec. 2)."""

    def __init__(self, c_in, c_out, act=False, bias_init=0.0, lr_mul=1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in) / lr_mul)
        self.bias = nn.Parameter(torch.full([c_out], float(bias_init)))
        self.w_gain, self.b_gain, self.act = lr_mul / math.sqrt(c_in), lr_mul, act

    def forward(self, x):
        x = F.linear(x, self.weight * self.w_gain)
        return bias_act(x, self.bias * self.b_gain, self.act, clamp=float("inf"))


class Conv(nn.Module):
    """Equalised-lr conv for D; with down=True it FIR-filters then strides by 2 (StyleGAN2 fig. 7c)."""

    def __init__(self, c_in, c_out, k, act=True, bias=True, down=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, k, k))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.w_gain, self.act, self.down, self.k = 1 / math.sqrt(c_in * k * k), act, down, k
        self.register_buffer("fir", torch.tensor(FIR), persistent=False)

    def forward(self, x, gain=1.0):
        w = self.weight * self.w_gain
        if self.down:
            x = F.conv2d(
                upfirdn2d(x, self.fir, pad=(self.k // 2 + 1, self.k // 2 + 1)), w, stride=2
            )
        else:
            x = F.conv2d(x, w, padding=self.k // 2)
        return bias_act(x, self.bias, self.act, gain)


class MappingNetwork(nn.Module):
    """z (B, z_dim) [+ class y] -> ws (B, num_ws, w_dim); with num_ws=None (D's class embedding,
    z_dim 0) -> (B, w_dim). Tracks w_avg, the centre that truncation pulls towards."""

    def __init__(self, z_dim, w_dim, classes, layers, num_ws, w_avg_beta=0.995):
        super().__init__()
        self.z_dim, self.classes, self.num_ws, self.w_avg_beta = z_dim, classes, num_ws, w_avg_beta
        self.embed = FC(classes, w_dim) if classes else None
        dims = [z_dim + (w_dim if classes else 0)] + [w_dim] * layers
        self.net = nn.Sequential(
            *[FC(a, b, act=True, lr_mul=0.01) for a, b in zip(dims[:-1], dims[1:])]
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z, y=None, psi=1.0, cutoff=None, update_w_avg=True):
        with torch.autocast((z if z is not None else y).device.type, enabled=False):
            x = [normalize_2nd_moment(z.float())] if self.z_dim else []
            if self.classes:
                x.append(normalize_2nd_moment(self.embed(F.one_hot(y, self.classes).float())))
            w = self.net(torch.cat(x, 1))
            if self.num_ws is None:
                return w
            if self.training and update_w_avg:
                self.w_avg.copy_(w.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
            ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
            if psi != 1:  # truncation trick in W (StyleGAN sec. 5.2) on the first `cutoff` styles
                ws[:, :cutoff] = self.w_avg.lerp(ws[:, :cutoff], psi)
            return ws


class SynthesisLayer(nn.Module):
    """Modulated conv (StyleGAN2 eq. 1-3) in the batched form: x * style, a shared conv, then each
    output channel times the demodulation 1/sqrt(sum_ik (s_i w_ijk)^2 + 1e-8); equal to per-sample
    modulated weights. Then noise * learned strength, bias and leaky ReLU (not for toRGB)."""

    def __init__(self, c_in, c_out, w_dim, res, up=False, k=3, demod=True, act=True, noise=True):
        super().__init__()
        self.affine = FC(w_dim, c_in, bias_init=1.0)  # styles start at 1: an unmodulated conv
        self.weight = nn.Parameter(torch.randn(c_out, c_in, k, k))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.up, self.k, self.demod, self.act = up, k, demod, act
        self.s_gain = 1.0 if demod else 1 / math.sqrt(c_in * k * k)  # toRGB: equalised lr instead
        self.noise_strength = nn.Parameter(torch.zeros([])) if noise else None
        if noise:
            self.register_buffer("noise_const", torch.randn(res, res))
        self.register_buffer("fir", torch.tensor(FIR), persistent=False)

    def forward(self, x, w):
        dev = x.device.type
        fp16 = torch.is_autocast_enabled(dev) and torch.get_autocast_dtype(dev) == torch.float16
        with torch.autocast(dev, enabled=False):  # styles and demodulation in fp32 (official)
            styles = self.affine(w.float()) * self.s_gain  # (B, c_in)
            weight = self.weight
            if fp16 and self.demod:
                # official pre-normalisation: max |s| = 1 and max |w| = 1/sqrt(fan-in) per output
                # channel keep the fp16 conv below 65504; demodulation cancels the scale. Not for
                # bf16, which has fp32's exponent range.
                fan_in = weight[0].numel()
                weight = weight / (math.sqrt(fan_in) * weight.abs().amax([1, 2, 3], keepdim=True))
                styles = styles / styles.abs().amax(1, keepdim=True)
            if self.demod:
                d = (styles.square() @ weight.square().sum([2, 3]).t() + 1e-8).rsqrt()  # (B, c_out)
        x = x * styles[:, :, None, None]
        if self.up:  # transposed conv, then the [1,3,3,1] filter removes its aliasing (sec. 4.1)
            x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)  # (B, c_out, 2H+1, 2W+1)
            x = upfirdn2d(x, self.fir, pad=(1, 1), gain=4)
        else:
            x = F.conv2d(x, weight, padding=self.k // 2)
        if self.demod:
            x = x * d[:, :, None, None]
        if self.noise_strength is not None:
            noise = (
                torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype)
                if self.training
                else self.noise_const
            )
            x = x + noise * self.noise_strength
        return bias_act(x, self.bias, self.act)


class SynthesisBlock(nn.Module):
    """One resolution of the skip generator (StyleGAN2 fig. 7b): [upsampling conv,] conv, toRGB;
    the running RGB image is FIR-upsampled and this block's toRGB output added to it."""

    def __init__(self, c_in, c_out, w_dim, res, amp):
        super().__init__()
        if c_in == 0:
            self.const = nn.Parameter(torch.randn(c_out, 4, 4))
        else:
            self.conv0 = SynthesisLayer(c_in, c_out, w_dim, res, up=True)
        self.conv1 = SynthesisLayer(c_out, c_out, w_dim, res)
        self.torgb = SynthesisLayer(c_out, 3, w_dim, res, k=1, demod=False, act=False, noise=False)
        self.num_conv, self.amp = (1 if c_in == 0 else 2), amp
        self.register_buffer("fir", torch.tensor(FIR), persistent=False)

    def forward(self, x, img, ws):  # ws (B, num_conv + 1, w_dim): the last one is toRGB's
        with fp32_unless(self.amp, ws.device.type):
            if self.num_conv == 1:
                x = self.const.unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
            else:
                x = self.conv0(x if self.amp else x.float(), ws[:, 0])
            x = self.conv1(x, ws[:, self.num_conv - 1])
            y = self.torgb(x, ws[:, self.num_conv])
        # the running RGB image is upsampled and summed in fp32 in every block (official
        # networks.py): only this block's toRGB output comes from reduced precision
        with torch.autocast(ws.device.type, enabled=False):
            return x, (y.float() if img is None else upsample2d(img, self.fir) + y.float())


class Generator(nn.Module):
    """z (B, z_dim), y (B,) labels or None -> image (B, 3, res, res), roughly in [-1, 1]."""

    def __init__(
        self, res=64, z_dim=512, w_dim=512, classes=0, cbase=16384, cmax=512, map_layers=8
    ):
        super().__init__()
        self.res, self.z_dim, self.c_dim = res, z_dim, classes
        blocks, c_in = [], 0
        for r in [2**i for i in range(2, int(math.log2(res)) + 1)]:
            c = min(cbase // r, cmax)
            blocks.append(SynthesisBlock(c_in, c, w_dim, r, amp=r >= max(res // 8, 8)))
            c_in = c
        self.blocks = nn.ModuleList(blocks)
        self.num_ws = (
            sum(b.num_conv for b in blocks) + 1
        )  # toRGB of block i shares conv0's w of block i+1
        self.mapping = MappingNetwork(z_dim, w_dim, classes, map_layers, self.num_ws)

    def synthesis(self, ws):
        x = img = None
        i = 0
        for b in self.blocks:
            x, img = b(x, img, ws[:, i : i + b.num_conv + 1])
            i += b.num_conv
        return img

    def forward(self, z, y=None, psi=1.0, cutoff=None, mix_prob=0.0, return_ws=False):
        ws = self.mapping(z, y, psi, cutoff)
        if (
            mix_prob > 0
        ):  # style mixing regularisation (StyleGAN sec. 3.1): a second w from layer k on
            k = torch.randint(1, self.num_ws, (), device=ws.device)
            mix = (torch.arange(self.num_ws, device=ws.device) >= k) & (
                torch.rand((), device=ws.device) < mix_prob
            )
            ws = torch.where(
                mix[None, :, None], self.mapping(torch.randn_like(z), y, update_w_avg=False), ws
            )
        img = self.synthesis(ws)
        return (img, ws) if return_ws else img


class DiscriminatorBlock(nn.Module):
    """Residual D block (StyleGAN2 fig. 7c): 3x3 conv, downsampling 3x3 conv, plus a downsampling
    1x1 skip; both branches scaled by sqrt(1/2) so the sum keeps unit variance."""

    def __init__(self, c_in, c_out, amp, from_rgb):
        super().__init__()
        self.fromrgb = Conv(3, c_in, 1) if from_rgb else None
        self.conv0, self.conv1 = Conv(c_in, c_in, 3), Conv(c_in, c_out, 3, down=True)
        self.skip = Conv(c_in, c_out, 1, act=False, bias=False, down=True)
        self.amp = amp

    def forward(self, x):
        with fp32_unless(self.amp, x.device.type):
            x = x if self.amp else x.float()
            if self.fromrgb is not None:
                x = self.fromrgb(x)
            return self.skip(x, gain=math.sqrt(0.5)) + self.conv1(
                self.conv0(x), gain=math.sqrt(0.5)
            )


def minibatch_std(x, group=4):
    """Minibatch standard deviation (Karras et al. 2018 sec. 3): the std of every feature over a
    group of samples, averaged to one number per group and appended as a channel, so D can see
    a lack of variety. The group is the largest divisor of the batch up to `group`."""
    N, C, H, W = x.shape
    g = min(group, N)
    while N % g:
        g -= 1
    s = x.reshape(g, -1, C, H, W)
    s = (s - s.mean(0)).square().mean(0).add(1e-8).sqrt().mean([1, 2, 3])  # (N / g,)
    return torch.cat([x, s.reshape(-1, 1, 1, 1).repeat(g, 1, H, W)], 1)


class Discriminator(nn.Module):
    """image (B, 3, res, res), y (B,) or None -> logit (B,). Conditional: the output is projected
    on an embedding of y, <out, cmap> / sqrt(dim) (official StyleGAN2-ADA)."""

    def __init__(self, res=64, classes=0, cbase=16384, cmax=512, map_layers=8, mbstd_group=4):
        super().__init__()
        ch = lambda r: min(cbase // r, cmax)  # noqa: E731
        self.blocks = nn.ModuleList(
            [
                DiscriminatorBlock(ch(r), ch(r // 2), r >= max(res // 8, 8), r == res)
                for r in [2**i for i in range(int(math.log2(res)), 2, -1)]
            ]
        )
        c = ch(4)
        self.mbstd_group, self.classes = mbstd_group, classes
        self.conv, self.fc = Conv(c + 1, c, 3), FC(c * 16, c, act=True)
        self.out = FC(c, c if classes else 1)
        self.mapping = MappingNetwork(0, c, classes, map_layers, None) if classes else None

    def forward(self, x, y=None):
        for b in self.blocks:
            x = b(x)
        with torch.autocast(x.device.type, enabled=False):
            x = self.conv(minibatch_std(x.float(), self.mbstd_group))
            x = self.out(self.fc(x.flatten(1)))
            if self.mapping is None:
                return x.squeeze(1)
            cmap = self.mapping(None, y)
            return (x * cmap).sum(1) / math.sqrt(cmap.shape[1])


# --- augmentation (ADA) -------------------------------------------------------------------------


def affine2d(a, b, c, d, e, f):
    """Batched homogeneous matrices [[a, b, c], [d, e, f], [0, 0, 1]]; entries (B,) tensors or numbers."""
    ref = next(v for v in (a, b, c, d, e, f) if torch.is_tensor(v))
    vals = [
        v if torch.is_tensor(v) else torch.full_like(ref, v) for v in (a, b, c, d, e, f, 0, 0, 1)
    ]
    return torch.stack(vals, -1).view(-1, 3, 3)


def scale2d(sx, sy):
    return affine2d(sx, 0, 0, 0, sy, 0)


def rotate2d(t):
    return affine2d(torch.cos(t), -torch.sin(t), 0, torch.sin(t), torch.cos(t), 0)


def translate2d(tx, ty):
    return affine2d(1, 0, tx, 0, 1, ty)


def augment(x, p):
    """ADA's 'bgc' pipeline (ADA appendix B, defaults of the official augment.py): x-flip, 90-degree
    rotation, integer translation (+-12.5%), isotropic scaling (log2 std 0.2), rotation (any angle),
    anisotropic scaling (0.2), fractional translation (std 12.5%), brightness (std 0.2), contrast
    (log2 std 0.5), luma flip, hue rotation (any angle), saturation (log2 std 1), each applied to
    each image with probability p. Differentiable in x. The geometric ops are composed into one
    inverse matrix G_inv (output pixel -> input pixel) and applied once: reflection padding, 2x
    upsampling with the sym6 wavelet filter, bilinear sampling, sym6 downsampling.
    Always in fp32, also inside autocast (official: fp32): a bf16 sampling grid puts pixels up to
    ~1 px off at 64x64 and ~9 px at 1024 (measured at p = 1). Returns x's dtype."""
    with torch.autocast(x.device.type, enabled=False):
        return augment_fp32(x.float(), p).to(x.dtype)


def augment_fp32(x, p):
    """The pipeline of augment() on an fp32 x, autocast off."""
    B, C, H, W = x.shape
    dev, ones, zeros = x.device, torch.ones(B, device=x.device), torch.zeros(B, device=x.device)

    def coin(value, default):  # value with probability p, else the identity's parameter
        return torch.where(torch.rand(B, device=dev) < p, value, default)

    G_inv = torch.eye(3, device=dev).expand(B, 3, 3)
    G_inv = G_inv @ scale2d(1 - 2 * coin(torch.floor(torch.rand(B, device=dev) * 2), zeros), ones)
    G_inv = G_inv @ rotate2d(math.pi / 2 * coin(torch.floor(torch.rand(B, device=dev) * 4), zeros))
    t = (torch.rand(2, B, device=dev) * 2 - 1) * 0.125
    t = torch.where(torch.rand(B, device=dev) < p, t, zeros)
    G_inv = G_inv @ translate2d(-torch.round(t[0] * W), -torch.round(t[1] * H))
    s = coin(torch.exp2(torch.randn(B, device=dev) * 0.2), ones)
    G_inv = G_inv @ scale2d(1 / s, 1 / s)
    p_rot = 1 - torch.sqrt((1 - p).clamp(0, 1))  # rotated before or after aniso: P(either) = p
    theta = (torch.rand(B, device=dev) * 2 - 1) * math.pi
    G_inv = G_inv @ rotate2d(torch.where(torch.rand(B, device=dev) < p_rot, theta, zeros))
    s = coin(torch.exp2(torch.randn(B, device=dev) * 0.2), ones)
    G_inv = G_inv @ scale2d(1 / s, s)
    theta = (torch.rand(B, device=dev) * 2 - 1) * math.pi
    G_inv = G_inv @ rotate2d(torch.where(torch.rand(B, device=dev) < p_rot, theta, zeros))
    t = torch.randn(2, B, device=dev) * 0.125
    t = torch.where(torch.rand(B, device=dev) < p, t, zeros)
    G_inv = G_inv @ translate2d(-t[0] * W, -t[1] * H)

    moved = (G_inv != torch.eye(3, device=dev)).any(2).any(1)  # (B,)
    if moved.any():
        f = torch.tensor(SYM6, device=dev)
        # pad by reflection just enough that the warped image's corners stay inside
        cx, cy, pad = (W - 1) / 2, (H - 1) / 2, len(SYM6) // 4
        corners = torch.tensor([[-cx, cx, cx, -cx], [-cy, -cy, cy, cy], [1, 1, 1, 1]], device=dev)
        m = (G_inv @ corners)[:, :2, :].permute(1, 0, 2).flatten(1)  # (2, B * 4)
        m = torch.cat([-m, m]).amax(1) + torch.tensor([pad * 2 - cx, pad * 2 - cy] * 2, device=dev)
        m = torch.minimum(m.clamp_min(0), torch.tensor([W - 1, H - 1] * 2, device=dev))
        mx0, my0, mx1, my1 = m.ceil().int().tolist()
        y = F.pad(x, [mx0, mx1, my0, my1], mode="reflect")
        G = translate2d((mx0 - mx1) / 2 * ones, (my0 - my1) / 2 * ones) @ G_inv
        y = upsample2d(y, f)
        G = scale2d(2 * ones, 2 * ones) @ G @ scale2d(0.5 * ones, 0.5 * ones)
        G = translate2d(-0.5 * ones, -0.5 * ones) @ G @ translate2d(0.5 * ones, 0.5 * ones)
        shape = [B, C, (H + pad * 2) * 2, (W + pad * 2) * 2]
        G = (
            scale2d(2 / y.shape[3] * ones, 2 / y.shape[2] * ones) @ G
        )  # pixels -> [-1, 1] for affine_grid
        G = G @ scale2d(shape[3] / 2 * ones, shape[2] / 2 * ones)
        grid = F.affine_grid(G[:, :2, :], shape, align_corners=False)
        y = F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        y = downsample2d(y, f.flip(0), crop=pad * 2)
        x = torch.where(moved[:, None, None, None], y, x)

    # colour: c * (x + b), then luma flip, hue rotation and saturation about the luma axis v
    b = coin(torch.randn(B, device=dev) * 0.2, zeros)
    c = coin(torch.exp2(torch.randn(B, device=dev) * 0.5), ones)
    v = torch.full((3,), 3**-0.5, device=dev)
    vv, I3 = torch.outer(v, v), torch.eye(3, device=dev)
    i = coin(torch.floor(torch.rand(B, device=dev) * 2), zeros)
    luma = I3 - 2 * vv * i[:, None, None]  # Householder reflection
    theta = coin((torch.rand(B, device=dev) * 2 - 1) * math.pi, zeros)[:, None, None]
    K = (
        torch.tensor([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], device=dev) * 3**-0.5
    )  # cross-product matrix of v
    hue = torch.cos(theta) * I3 + torch.sin(theta) * K + (1 - torch.cos(theta)) * vv  # Rodrigues
    s = coin(torch.exp2(torch.randn(B, device=dev)), ones)
    sat = vv + (I3 - vv) * s[:, None, None]
    M = sat @ hue @ luma * c[:, None, None]  # (B, 3, 3)
    coloured = (M @ (x.reshape(B, C, H * W) + b[:, None, None])).reshape(B, C, H, W)
    changed = (b != 0) | (c != 1) | (i != 0) | (theta.flatten() != 0) | (s != 1)
    return torch.where(changed[:, None, None, None], coloured, x)


def ada_update(p, r_t, n_img, target=0.6, ada_kimg=500):
    """ADA sec. 3: p moves by sign(r_t - target) * n_img / (ada_kimg * 1000), so it could go from
    0 to 1 in ada_kimg thousand images; r_t = E[sign(D(x_real))] over the images since the last update."""
    return (p + torch.sign(r_t - target) * n_img / (ada_kimg * 1000)).clamp(0, 1)


# --- losses -------------------------------------------------------------------------------------


def loss_d(logits_real, logits_fake):
    """Logistic loss: -log sigmoid(D(x)) - log(1 - sigmoid(D(G(z))))."""
    return F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean()


def loss_g(logits_fake):
    """Non-saturating: G maximises log sigmoid(D(G(z)))."""
    return F.softplus(-logits_fake).mean()


def r1_penalty(D, x_real, y, augment=lambda x: x):
    """R1 (Mescheder et al. 2018; StyleGAN2 sec. 3.1): ||grad_x D(x)||^2 summed over C*H*W, on
    reals; the gradient goes through the augmentation to the unaugmented image, as in the official
    code. Returns (penalty (B,), logits (B,))."""
    x = x_real.detach().requires_grad_(True)
    logits = D(augment(x), y)
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    return grad.square().sum([1, 2, 3]), logits


def path_length_penalty(img, ws, pl_mean, decay=0.01):
    """Path length regularisation (StyleGAN2 sec. 3.2, eq. 4): (||J_w^T y|| - a)^2 with
    y ~ N(0, I) / sqrt(H*W) (resolution-independent) and a the running mean of the lengths.
    Returns (penalty (B,), the updated running mean, detached)."""
    noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
    (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
    lengths = (
        grad.square().sum(2).mean(1).sqrt()
    )  # (B,): per style, averaged over the num_ws styles
    pl_mean = pl_mean.lerp(lengths.mean(), decay)
    return (lengths - pl_mean).square(), pl_mean.detach()


def all_reduce_grads(module):
    """Average gradients over processes (in place of DDP: see the docstring)."""
    params = [p for p in module.parameters() if p.grad is not None]
    if not dist.is_initialized() or not params:
        return
    flat = torch.cat([p.grad.flatten() for p in params])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(g.view_as(p))


# --- EMA, sampling ------------------------------------------------------------------------------


def ema_beta(batch, ema_kimg):
    """Per-step decay whose half-life is ema_kimg thousand images."""
    return 0.5 ** (batch / (ema_kimg * 1000)) if ema_kimg > 0 else 0.0


@torch.no_grad()
def update_ema(G_ema, G, beta):
    """Parameters: G_ema <- beta * G_ema + (1 - beta) * G. Buffers (BatchNorm statistics): copied."""
    torch._foreach_lerp_(list(G_ema.parameters()), list(G.parameters()), 1.0 - beta)
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def load_checkpoint(path, device="cpu"):
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("model") != MODEL:
        found = ckpt.get("model") if isinstance(ckpt, dict) else None
        raise UserError(f"{path} is not a {MODEL} checkpoint (model: {found})")
    return ckpt


def load_generator(path, device="cpu"):
    """Checkpoint -> G_ema in eval mode, with .res, .z_dim, .c_dim and .classes for generate()."""
    ckpt = load_checkpoint(path, device)
    a = ckpt["args"]
    classes = len(ckpt["classes"]) if len(ckpt["classes"]) > 1 else 0
    G = Generator(
        a["res"], a["z_dim"], a["w_dim"], classes, a["cbase"], a["cmax"], a["map_layers"]
    ).to(device)
    G.load_state_dict(ckpt["G_ema"])
    G.classes, G.truncation_cutoff = ckpt["classes"], None
    return G.eval().requires_grad_(False)


def latents(G, n, seed, y=None):
    """Seeded z (n, z_dim) and labels: y, else arange(n) % classes for a conditional G, else None."""
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    if G.c_dim and y is None:
        y = torch.arange(n) % G.c_dim
    return z, (y if G.c_dim else None)


@torch.no_grad()
def generate(G, n, seed=0, truncation=None, y=None, batch=256):
    """n images in [-1, 1], (n, 3, res, res) float32 on the CPU; same seed, same images.
    truncation is psi (w = w_avg + psi (w - w_avg)) on the first G.truncation_cutoff styles."""
    z, y = latents(G, n, seed, y)
    device, psi = next(G.parameters()).device, 1.0 if truncation is None else truncation
    cutoff = getattr(G, "truncation_cutoff", None)
    return torch.cat(
        [
            G(
                z[i : i + batch].to(device),
                None if y is None else y[i : i + batch].to(device),
                psi,
                cutoff,
            )
            .float()
            .clamp(-1, 1)
            .cpu()
            for i in range(0, n, batch)
        ]
    )


@torch.no_grad()
def interpolation_frames(G, n, seed=0, truncation=None, keys=4, steps=16):
    """Frames of n images, each moving linearly in W (the space the paper measures path lengths
    in, StyleGAN sec. 4.2) through `keys` latents and back; a conditional G keeps each column's class."""
    z, _ = latents(G, n * keys, seed)
    y = (torch.arange(n) % G.c_dim).repeat(keys).to(z.device) if G.c_dim else None
    device, psi = next(G.parameters()).device, 1.0 if truncation is None else truncation
    ws = G.mapping(
        z.to(device),
        None if y is None else y.to(device),
        psi,
        getattr(G, "truncation_cutoff", None),
    )
    ws, frames = ws.view(keys, n, G.num_ws, -1), []
    for k in range(keys):
        for t in torch.linspace(0, 1, steps + 1)[:-1]:
            frames.append(
                make_grid(G.synthesis(ws[k].lerp(ws[(k + 1) % keys], t.item())).float().cpu())
            )
    return frames


@torch.no_grad()
def style_mixing_grid(G, n, seed=0, truncation=None, coarse=4):
    """StyleGAN fig. 3: the top row and left column are sources B and A; cell (i, j) takes A_i's
    styles except the first `coarse` (the 4x4 and 8x8 layers: pose, face shape), which come from B_j."""
    z, y = latents(G, 2 * n, seed)
    device, psi = next(G.parameters()).device, 1.0 if truncation is None else truncation
    ws = G.mapping(
        z.to(device),
        None if y is None else y.to(device),
        psi,
        getattr(G, "truncation_cutoff", None),
    )
    wa, wb = ws[:n], ws[n:]
    rows = [torch.cat([torch.ones(1, 3, G.res, G.res, device=device), G.synthesis(wb)])]
    for i in range(n):
        mixed = wa[i : i + 1].repeat(n, 1, 1)
        mixed[:, :coarse] = wb[:, :coarse]
        rows.append(torch.cat([G.synthesis(wa[i : i + 1]), G.synthesis(mixed)]))
    return torch.cat(rows).float().clamp(-1, 1).cpu()


# --- training skeleton --------------------------------------------------------------------------


def is_cuda(device):
    """Every line below that runs only on a CUDA GPU asks this first (tests fake CUDA through it)."""
    return device.type == "cuda"


def setup_device(name):
    """--device auto -> cuda, else mps, else cpu. `cuda` is this process's GPU: cuda:LOCAL_RANK
    under torchrun, else cuda:0. Under torchrun, also start DDP. Returns (device, rank, world_size)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if name == "auto":
        name = (
            "cuda"
            if torch.cuda.is_available()
            else "mps"
            if torch.backends.mps.is_available()
            else "cpu"
        )
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"--device {name}: unknown device (use auto, cpu, cuda, cuda:N or mps)"
        ) from None
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: this machine has no MPS (Apple GPU) backend")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {name}: this machine has no CUDA GPU (or torch was built without CUDA)"
            )
        if world > 1 and device.index not in (None, local_rank):
            raise UserError(
                f"--device {name}: under torchrun each process uses cuda:LOCAL_RANK; pass --device cuda"
            )
        index = local_rank if world > 1 else device.index or 0
        if index >= torch.cuda.device_count():
            raise UserError(
                f"--device {name}: cuda:{index} does not exist ({torch.cuda.device_count()} GPU(s))"
            )
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")  # TF32 matmuls
        torch.backends.cudnn.allow_tf32 = True  # TF32 convolutions
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return device, rank, world


def setup_precision(name, device):
    """auto -> bf16 autocast on CUDA where supported, else fp32. Returns (name, autocast dtype)."""
    if name == "auto":
        name = "bf16" if is_cuda(device) and torch.cuda.is_bf16_supported() else "fp32"
    return name, {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def memory_format(device):
    """channels_last on CUDA (faster convolutions with tensor cores), the default layout elsewhere."""
    return torch.channels_last if is_cuda(device) else torch.contiguous_format


def peak_memory_gb(device):
    """Peak GPU memory allocated so far, in GiB; None off CUDA."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if is_cuda(device) else None


def any_rank(flag, device):
    """True on every rank when `flag` is true on any rank; all ranks must call it together."""
    if not dist.is_initialized():
        return bool(flag)
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def rng_states(device):
    """This process's RNG states, gathered from every rank (index = rank)."""
    state = {"cpu": torch.get_rng_state()}
    if is_cuda(device):
        state["cuda"] = torch.cuda.get_rng_state(device)
    if not dist.is_initialized():
        return [state]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, {k: v.cpu() for k, v in state.items()})
    return states


def set_rng_states(states, rank, device):
    if len(states) != int(os.environ.get("WORLD_SIZE", 1)):
        print(
            f"note: checkpoint has RNG states for {len(states)} process(es); noise after resume differs"
        )
        return
    torch.set_rng_state(states[rank]["cpu"].cpu())
    if is_cuda(device) and "cuda" in states[rank]:
        torch.cuda.set_rng_state(states[rank]["cuda"].cpu(), device)


def sample_due(step, args):
    """A grid every --sample-every steps and at the end; before the first of those, also at the
    first log step and then at doubling intervals, so that a new run shows a picture early."""
    k = step // args.log_every
    early = step < args.sample_every and step % args.log_every == 0 and k & (k - 1) == 0
    return step % args.sample_every == 0 or step == args.steps or early


def save_checkpoint(path, ckpt):
    """Atomic: write a temporary file, then rename over the old checkpoint."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(ckpt, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def finite(meter, *models):
    """Losses since the last log and all weights are finite, on every rank (syncs the GPU)."""
    tensors = list(meter.sums.values()) + [p for m in models for p in m.parameters()]
    ok = torch.stack([torch.isfinite(t).all() for t in tensors]).all().item()
    return not any_rank(not ok, tensors[-1].device)


class Meter:
    """Running sums of detached scalars, kept on the device so nothing syncs until `means()`."""

    def __init__(self):
        self.sums, self.n = {}, 0

    def add(self, **values):
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
        self.n += 1

    def means(self):
        keys = list(self.sums)
        vals = (
            torch.stack([self.sums[k] for k in keys]).div(max(self.n, 1)).tolist() if keys else []
        )
        self.sums, self.n = {}, 0
        return dict(zip(keys, vals))


def log_line(rec):
    """step 1200/50000 | kimg 76.8 | loss_D 1.213 | ... | 512 img/s | 1.9 GB | eta 2h41m"""
    skip = ("step", "steps", "kimg", "img_s", "mem_gb", "eta_s", "time")
    parts = [f"step {rec['step']}/{rec['steps']}", f"kimg {rec['kimg']:.1f}"]
    parts += [f"{k} {v:.4g}" for k, v in rec.items() if k not in skip]
    parts += [f"{rec['img_s']:.0f} img/s"] + (
        [f"{rec['mem_gb']:.2f} GB"] if rec.get("mem_gb") is not None else []
    )
    h, m = divmod(int(rec["eta_s"]) // 60, 60)
    return " | ".join(parts + [f"eta {h}h{m:02d}m" if h or m else f"eta {int(rec['eta_s'])}s"])


RESUME_FROM_COMMAND_LINE = (
    "data",
    "steps",
    "device",
    "compile",
    "log_every",
    "sample_every",
    "ckpt_every",
)


def start_or_resume(args):
    """Refuse to overwrite a run. On --resume every argument comes from the checkpoint except --out
    and those in RESUME_FROM_COMMAND_LINE typed on the command line; typing any other argument with
    a value other than the run's is an error (a plain --resume continues the same run)."""
    typed = set(vars(args).pop("typed", ())) - {"out", "resume"}
    path = os.path.join(args.out, "ckpt.pt")
    if not args.resume:
        if os.path.exists(path):
            raise UserError(
                f"{path} exists: pass --resume to continue that run, or choose another --out"
            )
        return args, None
    ckpt = load_checkpoint(path)
    saved = ckpt["args"]
    fixed = [
        k
        for k in sorted(typed - set(RESUME_FROM_COMMAND_LINE))
        if k in saved and getattr(args, k) != saved[k]
    ]
    if fixed:
        k = fixed[0]
        raise UserError(
            f"--{k.replace('_', '-')} {getattr(args, k)} differs from the run's {saved[k]}; on --resume "
            f"only {', '.join('--' + a.replace('_', '-') for a in RESUME_FROM_COMMAND_LINE)} can change"
        )
    kept = {k: v for k, v in saved.items() if k not in typed | {"out", "resume"}}
    if int(os.environ.get("RANK", 0)) == 0:
        given = ", ".join(f"{k}={getattr(args, k)}" for k in sorted(typed)) or "nothing"
        print(
            f"resume: from the command line: {given}; from the checkpoint: "
            + ", ".join(f"{k}={v}" for k, v in kept.items())
        )
    return argparse.Namespace(**(vars(args) | kept)), ckpt


class StopFlag:
    """Ctrl-C / SIGTERM ask the loop to save a checkpoint and stop; a second Ctrl-C stops at once."""

    def __init__(self):
        self.signum = None
        self.old = {}
        try:
            for s in (signal.SIGINT, signal.SIGTERM):
                self.old[s] = signal.signal(s, self.handle)
        except ValueError:  # not the main thread: no handlers
            pass

    def handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def restore(self):
        for s, h in self.old.items():
            signal.signal(s, h)


def positive_int(text):
    """argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a whole number above 0, got {text!r}")
    return value


def positive_float(text):
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text!r}")
    return value


def parse_args(parser, argv=None):
    """Parse argv; a bad value exits with one line. args.typed lists the arguments written on the
    command line (for --resume), whatever their value."""
    parser.error = lambda message: sys.exit(f"{MODEL}: error: {message} (see --help)")
    args = parser.parse_args(argv)
    # argparse leaves an attribute that the namespace already has, unless it was typed
    unset = object()
    seen = parser.parse_args(argv, argparse.Namespace(**{k: unset for k in vars(args)}))
    args.typed = sorted(k for k, v in vars(seen).items() if v is not unset)
    return args


# --- training -----------------------------------------------------------------------------------

R1_INTERVAL, PL_INTERVAL, ADA_INTERVAL = (
    16,
    4,
    4,
)  # lazy regularisation (StyleGAN2 sec. 3.1), ADA sec. 3


def train(args):
    args, ckpt = start_or_resume(args)
    check_res(args.res)
    device, rank, world = setup_device(args.device)
    precision, amp_dtype = setup_precision(args.precision, device)
    say = print if rank == 0 else (lambda *a, **k: None)
    if args.batch % world:
        raise UserError(
            f"--batch {args.batch} must be divisible by the number of processes ({world})"
        )
    torch.manual_seed(args.seed + rank)
    data = load_images(args.data, args.res, verbose=rank == 0)
    batches = Batches(data, args.batch // world, device, args.seed, rank, world, args.flip)
    classes = (
        len(data.classes) if len(data.classes) > 1 else 0
    )  # labelled data trains conditionally
    args.z_dim = args.z_dim or args.w_dim
    if args.r1_gamma is None:
        args.r1_gamma = 0.0002 * args.res**2 / args.batch

    G = Generator(
        args.res, args.z_dim, args.w_dim, classes, args.cbase, args.cmax, args.map_layers
    ).to(device)
    D = Discriminator(
        args.res, classes, args.cbase, args.cmax, args.map_layers, args.mbstd_group
    ).to(device)
    if world > 1:  # every rank starts from rank 0's weights (what DDP would do)
        for t in [*G.parameters(), *G.buffers(), *D.parameters(), *D.buffers()]:
            dist.broadcast(t.data, 0)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    # lazy regularisation takes every k-th step on its own: lr * k/(k+1), beta ** (k/(k+1)) (StyleGAN2 appendix B)
    r_G, r_D = PL_INTERVAL / (PL_INTERVAL + 1), R1_INTERVAL / (R1_INTERVAL + 1)
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr_g * r_G, betas=(0.0, 0.99**r_G), eps=1e-8)
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr_d * r_D, betas=(0.0, 0.99**r_D), eps=1e-8)
    scaler_G = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    scaler_D = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    ada_p = torch.tensor(args.p if args.aug == "fixed" else 0.0, device=device)
    ada_signs = torch.zeros(
        2, device=device
    )  # sum of sign(D(x_real)) and count since the last p update
    pl_mean, r1_last, pl_last = (torch.zeros((), device=device) for _ in range(3))
    step = 0
    if ckpt is not None:
        for name, obj in [
            ("G", G),
            ("D", D),
            ("G_ema", G_ema),
            ("opt_G", opt_G),
            ("opt_D", opt_D),
            ("scaler_G", scaler_G),
            ("scaler_D", scaler_D),
            ("loader", batches),
        ]:
            obj.load_state_dict(ckpt[name])
        for name, t in [("ada_p", ada_p), ("ada_signs", ada_signs), ("pl_mean", pl_mean)]:
            t.copy_(ckpt[name])
        step = ckpt["step"]
        set_rng_states(ckpt["rng"], rank, device)
        say(f"resuming {args.out}/ckpt.pt at step {step}/{args.steps}")
    layout = memory_format(device)  # channels_last on CUDA
    G, D, G_ema = (m.to(memory_format=layout) for m in (G, D, G_ema))
    G_train, D_train = G, D  # R1 and path length below always use the eager G and D
    if args.compile:
        G_train, D_train = torch.compile(G_train), torch.compile(D_train)
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    aug = (lambda x: augment(x, ada_p)) if args.aug != "none" else (lambda x: x)  # noqa: E731
    z_fixed = torch.randn(64, args.z_dim, generator=torch.Generator().manual_seed(args.seed)).to(
        device
    )
    y_fixed = (torch.arange(64) % classes).to(device) if classes else None
    os.makedirs(os.path.join(args.out, "samples"), exist_ok=True)
    say(
        f"{MODEL} | {args.data}: {len(data.labels)} images, {args.res}x{args.res}"
        f"{f', {classes} classes (conditional)' if classes else ''} | "
        f"G {sum(p.numel() for p in G.parameters()) / 1e6:.2f}M D {sum(p.numel() for p in D.parameters()) / 1e6:.2f}M "
        f"params | aug {args.aug} | r1_gamma {args.r1_gamma:.4g} | {device} {precision} | batch {args.batch} on "
        f"{world} process(es) | out {args.out}"
    )

    def checkpoint():
        ckpt = {
            "model": MODEL,
            "args": vars(args),
            "step": step,
            "classes": data.classes,
            "rng": rng_states(device),
            "G": G.state_dict(),
            "D": D.state_dict(),
            "G_ema": G_ema.state_dict(),
            "opt_G": opt_G.state_dict(),
            "opt_D": opt_D.state_dict(),
            "scaler_G": scaler_G.state_dict(),
            "scaler_D": scaler_D.state_dict(),
            "loader": batches.state_dict(),
            "ada_p": ada_p,
            "ada_signs": ada_signs,
            "pl_mean": pl_mean,
        }
        if rank == 0:
            save_checkpoint(os.path.join(args.out, "ckpt.pt"), ckpt)

    def fail_if_not_finite():
        if not finite(meter, G, D):
            kept = (
                f"the last good checkpoint is {args.out}/ckpt.pt"
                if os.path.exists(os.path.join(args.out, "ckpt.pt"))
                else "no checkpoint had been written"
            )
            raise UserError(
                f"loss or weights became NaN/inf by step {step}; stopped without saving ({kept})"
            )

    meter, stop, t_log, step_log = Meter(), StopFlag(), time.time(), step
    try:
        while step < args.steps:
            x_real, y = next(batches)
            y = y if classes else None
            x_real = x_real.contiguous(memory_format=layout)
            z = torch.randn(x_real.shape[0], args.z_dim, device=device)
            with torch.no_grad(), autocast:
                x_fake = G_train(z, y, mix_prob=args.style_mixing)
            with autocast:
                logits_real, logits_fake = D_train(aug(x_real), y), D_train(aug(x_fake), y)
                loss_D = loss_d(logits_real.float(), logits_fake.float())
            opt_D.zero_grad(set_to_none=True)
            scaler_D.scale(loss_D).backward()
            all_reduce_grads(D)
            scaler_D.step(opt_D)
            scaler_D.update()
            ada_signs[0] += logits_real.detach().sign().sum()
            ada_signs[1] += len(logits_real)
            if step % R1_INTERVAL == 0 and args.r1_gamma > 0:
                penalty, _ = r1_penalty(D, x_real.float(), y, aug)
                opt_D.zero_grad(set_to_none=True)
                (penalty.mean() * (args.r1_gamma / 2) * R1_INTERVAL).backward()
                all_reduce_grads(D)
                opt_D.step()
                r1_last = penalty.detach().mean()

            D.requires_grad_(False)  # G step: no gradients for D's weights
            with autocast:
                x_fake = G_train(torch.randn_like(z), y, mix_prob=args.style_mixing)
                loss_G = loss_g(D_train(aug(x_fake), y).float())
            opt_G.zero_grad(set_to_none=True)
            scaler_G.scale(loss_G).backward()
            all_reduce_grads(G)
            scaler_G.step(opt_G)
            scaler_G.update()
            if step % PL_INTERVAL == 0 and args.pl_weight > 0:
                n = max(
                    1, z.shape[0] // 2
                )  # path length on half the batch (official pl_batch_shrink 2)
                img, ws = G(
                    torch.randn_like(z[:n]),
                    None if y is None else y[:n],
                    mix_prob=args.style_mixing,
                    return_ws=True,
                )
                penalty, pl_mean = path_length_penalty(img, ws, pl_mean)
                opt_G.zero_grad(set_to_none=True)
                (penalty.mean() * args.pl_weight * PL_INTERVAL).backward()
                all_reduce_grads(G)
                opt_G.step()
                pl_last = penalty.detach().mean()
            D.requires_grad_(True)
            update_ema(
                G_ema,
                G,
                ema_beta(
                    args.batch, min(args.ema_kimg, step * args.batch / 1000 * args.ema_rampup)
                ),
            )
            step += 1
            meter.add(
                loss_D=loss_D,
                loss_G=loss_G,
                d_real=logits_real.mean(),
                d_fake=logits_fake.mean(),
                r_t=logits_real.sign().mean(),
            )
            if args.aug == "ada" and step % ADA_INTERVAL == 0:
                signs = ada_signs.clone()
                if dist.is_initialized():
                    dist.all_reduce(signs)
                ada_p.copy_(
                    ada_update(
                        ada_p,
                        signs[0] / signs[1],
                        args.batch * ADA_INTERVAL,
                        args.ada_target,
                        args.ada_kimg,
                    )
                )
                ada_signs.zero_()

            if step % args.log_every == 0 or step == args.steps:
                fail_if_not_finite()
                dt, rec = (
                    time.time() - t_log,
                    {"step": step, "steps": args.steps, "kimg": step * args.batch / 1000},
                )
                rec.update(meter.means())
                rec.update(
                    r1=r1_last.item(), pl=pl_last.item(), pl_mean=pl_mean.item(), p=ada_p.item()
                )
                rec["img_s"] = (step - step_log) * args.batch / max(dt, 1e-9)
                rec["mem_gb"] = peak_memory_gb(device)
                rec["eta_s"] = (args.steps - step) * args.batch / max(rec["img_s"], 1e-9)
                if rank == 0:
                    print(log_line(rec), flush=True)
                    with open(os.path.join(args.out, "log.jsonl"), "a") as f:
                        f.write(json.dumps(dict(rec, time=time.time())) + "\n")
                t_log, step_log = time.time(), step
            t_pause = time.time()  # samples and checkpoints are left out of img/s
            if sample_due(step, args) and rank == 0:
                G_ema.eval()
                with torch.no_grad():
                    save_grid(
                        G_ema(z_fixed, y_fixed),
                        os.path.join(args.out, "samples", f"step_{step:06d}.png"),
                        nrow=8,
                    )
                save_progress_gif(
                    os.path.join(args.out, "samples"), os.path.join(args.out, "progress.gif")
                )
                if os.path.exists(os.path.join(args.out, "log.jsonl")):
                    plot_losses(
                        os.path.join(args.out, "log.jsonl"), os.path.join(args.out, "loss.png")
                    )
            if (world == 1 or step % 10 == 0) and any_rank(stop.signum is not None, device):
                fail_if_not_finite()
                checkpoint()
                say(f"stopped at step {step}: saved {args.out}/ckpt.pt; continue with --resume")
                raise SystemExit(130 if stop.signum == signal.SIGINT else 143)
            if step % args.ckpt_every == 0 or step == args.steps:
                fail_if_not_finite()
                checkpoint()
            t_log += time.time() - t_pause
    finally:
        stop.restore()
        if dist.is_initialized():
            dist.destroy_process_group()
    say(f"done: {args.out}/ckpt.pt, samples in {args.out}/samples, loss curve {args.out}/loss.png")
    return G_ema


def sample(args):
    device, _, _ = setup_device(args.device)
    G = load_generator(args.sample, device)
    G.truncation_cutoff = args.truncation_cutoff
    folder = os.path.dirname(args.sample) or "."
    tag = (
        f"seed{args.seed}"
        + (f"_psi{args.truncation:g}" if args.truncation is not None else "")
        + (f"_cutoff{args.truncation_cutoff}" if args.truncation_cutoff is not None else "")
    )
    if args.interp:
        path = save_gif(
            interpolation_frames(G, args.n, args.seed, args.truncation),
            os.path.join(folder, f"interp_{tag}.gif"),
        )
    elif args.mixing:
        k = max(1, math.isqrt(args.n))
        path = save_grid(
            style_mixing_grid(G, k, args.seed, args.truncation),
            os.path.join(folder, f"mixing_{tag}.png"),
            nrow=k + 1,
        )
    else:
        path = save_grid(
            generate(G, args.n, args.seed, args.truncation),
            os.path.join(folder, f"samples_{tag}.png"),
        )
    print(path)


# --- command line -------------------------------------------------------------------------------


def get_args(argv=None):
    p = argparse.ArgumentParser(
        description="StyleGAN2-ADA (Karras et al. 2020) for anime faces.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--data", default="toy", help="image folder (subfolders = classes), .zip, or 'toy'"
    )
    p.add_argument(
        "--res", type=int, default=64, help="image resolution (power of two, 32 to 1024)"
    )
    p.add_argument("--out", default=f"out/{MODEL}", help="run folder: ckpt.pt, log.jsonl, samples/")
    p.add_argument(
        "--steps",
        type=positive_int,
        default=60000,
        help="generator updates to train for (one D step each)",
    )
    p.add_argument(
        "--batch", type=positive_int, default=32, help="global batch, split across processes"
    )
    p.add_argument("--lr-g", type=float, default=0.0025, help="generator Adam learning rate")
    p.add_argument("--lr-d", type=float, default=0.0025, help="discriminator Adam learning rate")
    p.add_argument(
        "--ema-kimg", type=float, default=10.0, help="G_ema half-life in thousands of images"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed for weights, noise, data order and samples"
    )
    p.add_argument(
        "--device", default="auto", help="auto (cuda, else mps, else cpu), or e.g. cuda:1"
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto = bf16 autocast on CUDA when supported, else fp32; fp16 adds a GradScaler",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile G and D forward passes")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its ckpt.pt"
    )
    p.add_argument("--log-every", type=positive_int, default=50, help="steps between log lines")
    p.add_argument(
        "--sample-every", type=positive_int, default=200, help="steps between sample grids"
    )
    p.add_argument(
        "--ckpt-every", type=positive_int, default=1000, help="steps between checkpoints"
    )
    p.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="random horizontal flips",
    )
    p.add_argument(
        "--sample", metavar="CKPT", help="sampling mode: write a grid from this checkpoint's G_ema"
    )
    p.add_argument(
        "--n",
        type=positive_int,
        default=64,
        help="sampling mode: number of images (--mixing: sqrt(n) per side)",
    )
    p.add_argument(
        "--truncation", type=float, default=None, help="truncation psi in W, e.g. 0.7 (sampling)"
    )
    p.add_argument(
        "--truncation-cutoff",
        type=int,
        default=None,
        help="truncate only the first N styles (default all)",
    )
    p.add_argument(
        "--interp", action="store_true", help="sampling mode: latent-interpolation GIF instead"
    )
    p.add_argument("--mixing", action="store_true", help="sampling mode: style-mixing grid instead")
    p.add_argument("--z-dim", type=int, default=None, help="latent z size (default: --w-dim)")
    p.add_argument("--w-dim", type=int, default=512, help="intermediate latent w size")
    p.add_argument(
        "--map-layers", type=int, default=8, help="mapping network depth (the paper's 8)"
    )
    p.add_argument(
        "--cbase", type=int, default=16384, help="channels at resolution r: min(cbase / r, cmax)"
    )
    p.add_argument("--cmax", type=int, default=512, help="maximum channels per layer")
    p.add_argument(
        "--mbstd-group", type=int, default=4, help="minibatch standard deviation group size"
    )
    p.add_argument(
        "--r1-gamma",
        type=float,
        default=None,
        help="R1 weight gamma (default 0.0002 * res^2 / batch)",
    )
    p.add_argument("--pl-weight", type=float, default=2.0, help="path length regularisation weight")
    p.add_argument(
        "--style-mixing", type=float, default=0.9, help="style mixing regularisation probability"
    )
    p.add_argument(
        "--aug",
        default="ada",
        choices=["ada", "fixed", "none"],
        help="augmentation probability p: adaptive, fixed at --p, or no augmentation",
    )
    p.add_argument("--p", type=float, default=0.0, help="augmentation probability with --aug fixed")
    p.add_argument(
        "--ada-target", type=float, default=0.6, help="ADA target for r_t = E[sign(D(x_real))]"
    )
    p.add_argument(
        "--ada-kimg",
        type=float,
        default=500,
        help="ADA speed: thousands of images for p to go 0 -> 1",
    )
    p.add_argument(
        "--ema-rampup",
        type=float,
        default=0.05,
        help="EMA half-life at most this fraction of images seen",
    )
    return parse_args(p, argv)


if __name__ == "__main__":
    args = get_args()
    try:
        sample(args) if args.sample else train(args)
    except UserError as e:
        sys.exit(f"{MODEL}: error: {e}")
