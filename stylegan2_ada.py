"""StyleGAN2-ADA: "Analyzing and Improving the Image Quality of StyleGAN", Tero Karras, Samuli
Laine, Miika Aittala, Janne Hellsten, Jaakko Lehtinen, Timo Aila, 2020. arXiv:1912.04958; with
"Training Generative Adversarial Networks with Limited Data", Tero Karras, Miika Aittala, Janne
Hellsten, Samuli Laine, Jaakko Lehtinen, Timo Aila, 2020. arXiv:2006.06676.

Paper -> code
- mapping network: pixel-normalised z (+ label embedding), FC layers at lr x0.01 (the paper's 8;
  --map-layers 2 by default, see below); w_avg tracked for the truncation trick (StyleGAN
  sec. 2, 5.2)                                                          -> MappingNetwork
- equalised learning rate everywhere (Karras et al. 2018 sec. 4.1)      -> FC, Conv, SynthesisLayer
- modulated convolution with weight demodulation (StyleGAN2 sec. 2.2, eq. 1-3), per-layer noise
  with a learned strength, bias + leaky ReLU with gain sqrt(2)          -> SynthesisLayer
- skip generator: learned 4x4 constant, toRGB at every resolution, summed after FIR upsampling
  with [1,3,3,1] (StyleGAN2 sec. 4.1, fig. 7)                           -> SynthesisBlock, upfirdn2d
- residual D with FIR downsampling, minibatch std, conditional projection on an 8-layer mapping
  of the class, as the official code (StyleGAN2 sec. 4.1; Miyato & Koyama 2018 for the
  projection)                                                           -> Discriminator
- style mixing with probability 0.9 (StyleGAN sec. 3.1)                 -> Generator.forward
- non-saturating logistic loss; lazy R1 every 16 D steps; path length every 4 G steps (weight 2,
  decay 0.01, batch / 2) (StyleGAN2 sec. 3)       -> loss_d, loss_g, r1_penalty, path_length_penalty
- Adam (0, 0.99), lr and beta corrected for lazy regularisation (StyleGAN2 appendix B) -> lazy_adam
- ADA 'bgc' pipeline: 12 transforms, each with probability p, on every image D sees,
  differentiable (ADA sec. 2.3, appendix B)                             -> augment
- adaptive p from r_t = E[sign(D(x_real))], target 0.6, 500 kimg from 0 to 1 (ADA sec. 3)
                                                                        -> ada_update, ADA

Not from the paper: what changes results
- Defaults: the official 'auto' config, one GPU (train.py:155, 165-174): 2 mapping layers (paper
  8); min(--cbase / r, --cmax 512) channels, cbase 16384 (32768 from 512 px); lr 0.0025 (0.002 at
  1024 px); R1 gamma 0.0002 * res^2 / batch; EMA half-life batch * 10 / 32 kimg; mbstd groups of 4.
- The config follows --batch (default 32; at 64x64: gamma 0.0256, 10 kimg). Official 'auto' picks
  the batch, min(4096 / res, 32) per GPU, and keeps that batch's gamma and half-life under --batch.
- --steps 60000 at batch 32 is 1920 kimg, not the config's 25000. z_dim defaults to w_dim (512).
- Fakes take the real batch's labels. G_ema's half-life ramps up, min(--ema-kimg, 0.05 * kimg
  seen), and G_ema copies G's w_avg (both official).
- D's mapping of c has 8 layers whatever G's (networks.py:180, 714; train.py:180 sets only G's);
  its skip conv is unclamped (networks.py:553-554).
- Augmentation: reflection padding, 2x up with the 12-tap 'sym6' low-pass, bilinear grid_sample,
  2x down (official). Images that draw no transform pass untouched, so p = 0 is the identity
  (official: all are filtered); p is clamped to [0, 1] (official: only >= 0).
- Lazy R1 and path length run at steps 0, k, 2k, ...; p moves after steps 3, 7, 11, ...: the
  official batch_idx before and after its increment (training_loop.py:271, 309-312).
- Several attributes (--labels CSV): c is their one-hots side by side (official: any vector c); G
  embeds it as a sum of one vector per value, D projects on a mapping of the whole c. One attribute
  (subfolders, one column) is the paper's case. Sampling draws the attributes not asked for from
  training frequencies; grids show the first attribute down, the second across.
- Noise: random in training, fixed buffers in eval (official generate.py's 'const'): generate() is
  reproducible. It clamps to [-1, 1].
Not from the paper: engineering
- Pure PyTorch: FIR filters are separable depthwise convs; the modulated conv and the upsampling
  conv (transposed conv, then FIR) take the official code's non-fused forms.
- Gradients averaged by hand, as stylegan3: DDP's hooks miss R1's and path length's double backward
  and D frozen in the G step. pl_mean is per process (official); checkpoints keep rank 0's w_avg.
- Reduced precision (bf16 autocast on CUDA by default) only in the convs and FIR filters of blocks
  at >= max(res/8, 8) (official num_fp16_res = 4), clamped to +-256 (official). fp32: styles,
  demodulation, the RGB skip image, mapping, 4x4 layers, augmentation, R1 and path length (the last
  two eager under --compile). fp16: the modulated conv pre-normalises weights and styles (official).
- Devices, DDP start-up, atomic checkpoints, resume: the plumbing block, as in every file.
- Official files: names and layouts as stylegan2-ada-pytorch's networks.py and legacy.py (TF:
  transposed weights, the flipped upsampling conv, styles' bias + 1); mapping layers stored at
  another lr multiplier are rescaled to ours, 0.01. The file's conv_clamp, num_fp16_res and
  w_avg_beta are not used (ours: 256, 4, 0.995); a TF D without mbstd_group_size gets the TF
  code's 4 (legacy.py: the whole batch).

Starting from a trained model: --sample FILE and --init FILE also read stylegan2-ada-pytorch
network pickles (network-snapshot-*.pkl, the published .pkl files) and TensorFlow StyleGAN2 /
StyleGAN2-ADA pickles (G, D, Gs), sizes from the file's init_kwargs / static_kwargs, nothing in
the file run; a network this file does not build (StyleGAN3, a StyleGAN2 'orig' or 'resnet' G,
other channel rules or activations) is one line               -> read_weights, read_reference
--freeze-d N: FreezeD (Mo et al. 2020), D's first N layers fixed while fine-tuning, counted as
the official train.py --freezed counts them                                        -> freeze_d

Usage
    python stylegan2_ada.py                          # built-in toy faces, 64x64, conditional
    python stylegan2_ada.py --data ./faces           # any folder or .zip; subfolders = classes
    python stylegan2_ada.py --data ./faces --labels tags.csv [--label-columns hair,eyes]
    # CPU smoke run:
    python stylegan2_ada.py --res 32 --steps 200 --batch 8 --cbase 256 --cmax 16 --w-dim 32
    python stylegan2_ada.py --data ./faces --resume --steps 60000   # out/stylegan2_ada-faces
    torchrun --nproc_per_node=4 stylegan2_ada.py --data ./faces
    python stylegan2_ada.py --sample out/stylegan2_ada-faces/ckpt.pt --n 64 [--class blonde]
        [--class hair=blonde,eyes=blue]   # several attributes: any subset, the rest drawn
        [--truncation 0.7 [--truncation-cutoff 8]] [--interp | --mixing]
    python stylegan2_ada.py --sample network-snapshot-001000.pkl   # an official pickle, or TF's
    python stylegan2_ada.py --data ./faces --res 256 --init ffhq-res256.pkl --freeze-d 10
"""

import argparse
import collections
import contextlib
import copy
import io
import json
import math
import os
import pickle
import re
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from common import Batches, UserError, load_images, make_grid, save_gif, save_grid, save_samples

MODEL = "stylegan2_ada"
FIR = [1.0, 3.0, 3.0, 1.0]  # the [1,3,3,1] binomial low-pass of G and D (StyleGAN2 sec. 4.1)
# the 'sym6' wavelet low-pass of ADA's geometric augmentation (ADA appendix B.2)
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


def check_res(res, cbase=None):
    if res < 32 or res > 1024 or res & (res - 1):
        raise UserError(f"{MODEL} builds power-of-two resolutions from 32 to 1024; got --res {res}")
    if cbase is not None and cbase < res:  # min(cbase / r, cmax) channels at r
        raise UserError(f"--cbase {cbase} leaves no channels at {res}x{res}; use at least {res}")


def upfirdn2d(x, f, up=1, down=1, pad=(0, 0), gain=1.0):
    """Upsample by zero insertion, pad (negative = crop), convolve with the FIR filter f x f (f 1-D,
    normalised to sum 1; times `gain`), keep every down-th pixel: the official CUDA op in plain
    PyTorch. (B, C, H, W) -> (B, C, H', W'), H' = (H * up + sum(pad) - len(f)) // down + 1."""
    B, C, H, W = x.shape
    if up > 1:
        x = F.pad(x.reshape(B, C, H, 1, W, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(
            B, C, H * up, W * up
        )
    # flipped: a true convolution
    f = (torch.outer(f, f) * (gain / f.sum() ** 2)).flip([0, 1]).to(x.dtype)
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
    if act:
        x = F.leaky_relu(x, 0.2) * (math.sqrt(2) * gain)
    elif gain != 1:
        x = x * gain
    return x.clamp(-clamp * gain, clamp * gain)


def fp32_unless(amp, device_type):
    """Blocks below the 4 highest resolutions run in fp32 even under autocast (official
    num_fp16_res)."""
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
    """Equalised-lr conv for D; with down=True it FIR-filters then strides by 2 (StyleGAN2 fig. 7c):
    (B, c_in, H, W) -> (B, c_out, H / 2, W / 2)."""

    def __init__(self, c_in, c_out, k, act=True, bias=True, down=False, clamp=256.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, k, k))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.w_gain, self.act, self.down, self.k = 1 / math.sqrt(c_in * k * k), act, down, k
        self.clamp = clamp
        self.register_buffer("fir", torch.tensor(FIR), persistent=False)

    def forward(self, x, gain=1.0):
        w = self.weight * self.w_gain
        if self.down:
            x = F.conv2d(
                upfirdn2d(x, self.fir, pad=(self.k // 2 + 1, self.k // 2 + 1)), w, stride=2
            )
        else:
            x = F.conv2d(x, w, padding=self.k // 2)
        return bias_act(x, self.bias, self.act, gain, self.clamp)


class MappingNetwork(nn.Module):
    """z (B, z_dim) [+ labels y] -> ws (B, num_ws, w_dim); with num_ws=None (D's class embedding,
    z_dim 0) -> (B, w_dim). Tracks w_avg, the centre that truncation pulls towards.
    n_classes: 0 (unconditional), n (one attribute, y (B,)) or [n_1, ..., n_k] (k attributes,
    y (B, k)); the label vector c is the one-hot of y, or the k one-hots side by side."""

    def __init__(self, z_dim, w_dim, n_classes, layers, num_ws, w_avg_beta=0.995):
        super().__init__()
        if isinstance(n_classes, list):
            self.sizes = n_classes
        else:
            self.sizes = [n_classes] if n_classes else []
        self.c_dim = sum(self.sizes)  # the width of c
        self.z_dim, self.num_ws, self.w_avg_beta = z_dim, num_ws, w_avg_beta
        self.embed = FC(self.c_dim, w_dim) if n_classes else None
        # attribute j's values are the n_j columns of c from offsets[j]; a buffer that is not
        # saved, so checkpoints keep their keys
        offsets = torch.tensor([0, *self.sizes[:-1]]).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        dims = [z_dim + (w_dim if n_classes else 0)] + [w_dim] * layers
        self.net = nn.Sequential(
            *[FC(a, b, act=True, lr_mul=0.01) for a, b in zip(dims[:-1], dims[1:])]
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z, y=None, psi=1.0, cutoff=None, update_w_avg=True):
        with torch.autocast((z if z is not None else y).device.type, enabled=False):
            x = [normalize_2nd_moment(z.float())] if self.z_dim else []
            if self.c_dim:  # c (B, sum n_i): one 1 per attribute
                c = F.one_hot(y.reshape(len(y), -1) + self.offsets, self.c_dim).sum(1)
                x.append(normalize_2nd_moment(self.embed(c.float())))
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

    def forward(self, x, w):  # (B, c_in, H, W), w (B, w_dim) -> (B, c_out, H, W), 2H with up
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
    """z (B, z_dim), y (B,) or (B, k) labels or None -> image (B, 3, res, res), roughly in [-1, 1].
    n_classes: 0, n or [n_1, ..., n_k], as MappingNetwork."""

    def __init__(
        self, res=64, z_dim=512, w_dim=512, n_classes=0, cbase=16384, cmax=512, map_layers=2
    ):
        super().__init__()
        self.res, self.z_dim = res, z_dim
        blocks, c_in = [], 0
        for r in [2**i for i in range(2, int(math.log2(res)) + 1)]:
            c = min(cbase // r, cmax)
            blocks.append(SynthesisBlock(c_in, c, w_dim, r, amp=r >= max(res // 8, 8)))
            c_in = c
        self.blocks = nn.ModuleList(blocks)
        # toRGB of block i shares conv0's w of block i+1
        self.num_ws = sum(b.num_conv for b in blocks) + 1
        self.mapping = MappingNetwork(z_dim, w_dim, n_classes, map_layers, self.num_ws)
        self.c_dim = self.mapping.c_dim

    def synthesis(self, ws):  # (B, num_ws, w_dim) -> (B, 3, res, res)
        x = img = None
        i = 0
        for b in self.blocks:  # x: (B, c, r, r) features; img: the RGB image so far, (B, 3, r, r)
            x, img = b(x, img, ws[:, i : i + b.num_conv + 1])
            i += b.num_conv
        return img

    def forward(self, z, y=None, psi=1.0, cutoff=None, mix_prob=0.0, return_ws=False):
        ws = self.mapping(z, y, psi, cutoff)  # (B, num_ws, w_dim)
        if mix_prob > 0:  # style mixing regularisation (StyleGAN sec. 3.1): a second w from k on
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
        # the skip conv is not clamped (official)
        self.skip = Conv(c_in, c_out, 1, act=False, bias=False, down=True, clamp=float("inf"))
        self.amp = amp

    def forward(self, x):  # (B, c_in, H, W) -> (B, c_out, H / 2, W / 2)
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
    """image (B, 3, res, res), y (B,) or (B, k) or None -> logit (B,). Conditional: the output is
    projected on an embedding of y, <out, cmap> / sqrt(dim), cmap from a mapping network of y with
    map_layers 8 whatever G's depth (official)."""

    def __init__(self, res=64, n_classes=0, cbase=16384, cmax=512, map_layers=8, mbstd_group=4):
        super().__init__()
        ch = lambda r: min(cbase // r, cmax)  # noqa: E731
        self.blocks = nn.ModuleList(
            [
                DiscriminatorBlock(ch(r), ch(r // 2), amp=r >= max(res // 8, 8), from_rgb=r == res)
                for r in [2**i for i in range(int(math.log2(res)), 2, -1)]
            ]
        )
        c = ch(4)
        self.mbstd_group = mbstd_group
        self.conv, self.fc = Conv(c + 1, c, 3), FC(c * 16, c, act=True)
        self.out = FC(c, c if n_classes else 1)
        self.mapping = MappingNetwork(0, c, n_classes, map_layers, None) if n_classes else None

    def forward(self, x, y=None):
        for b in self.blocks:  # (B, 3, res, res) -> ... -> (B, c, 4, 4)
            x = b(x)
        with torch.autocast(x.device.type, enabled=False):
            x = minibatch_std(x.float(), self.mbstd_group)  # (B, c + 1, 4, 4)
            x = self.conv(x)  # (B, c, 4, 4)
            x = self.out(self.fc(x.flatten(1)))  # (B, c * 16) -> (B, c), or (B, 1) unconditional
            if self.mapping is None:
                return x.squeeze(1)
            cmap = self.mapping(None, y)
            return (x * cmap).sum(1) / math.sqrt(cmap.shape[1])


# --- augmentation (ADA) -------------------------------------------------------------------------


def affine2d(a, b, c, d, e, f):
    """Batched homogeneous matrices [[a, b, c], [d, e, f], [0, 0, 1]], (B, 3, 3); entries (B,)
    tensors or numbers."""
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
    each image with probability p (a float or a 0-d tensor). Differentiable in x. The geometric
    ops are composed into one inverse matrix G_inv (output pixel -> input pixel) and applied once:
    reflection padding, 2x upsampling with the sym6 wavelet filter, bilinear sampling, sym6
    downsampling.
    Always in fp32, also inside autocast (official: fp32): a bf16 sampling grid puts pixels up to
    ~1 px off at 64x64 and ~9 px at 1024 (measured at p = 1). Returns x's dtype."""
    with torch.autocast(x.device.type, enabled=False):
        return augment_fp32(x.float(), p).to(x.dtype)


def augment_fp32(x, p):
    """The pipeline of augment() on an fp32 x, autocast off."""
    B, C, H, W = x.shape
    dev, ones, zeros = x.device, torch.ones(B, device=x.device), torch.zeros(B, device=x.device)
    p = torch.as_tensor(p, device=dev)  # training's ADA.p passes through as it is

    def coin(value, default):  # value with probability p, else the identity's parameter
        return torch.where(torch.rand(B, device=dev) < p, value, default)

    # geometric: inverse (output -> input pixel) matrices named as the official augment.py's
    # transforms (its `rotate` is rotate_pre and rotate_post)
    xflip = scale2d(1 - 2 * coin(torch.floor(torch.rand(B, device=dev) * 2), zeros), ones)
    rotate90 = rotate2d(math.pi / 2 * coin(torch.floor(torch.rand(B, device=dev) * 4), zeros))
    t = (torch.rand(2, B, device=dev) * 2 - 1) * 0.125
    t = torch.where(torch.rand(B, device=dev) < p, t, zeros)
    xint = translate2d(-torch.round(t[0] * W), -torch.round(t[1] * H))  # integer translation
    s = coin(torch.exp2(torch.randn(B, device=dev) * 0.2), ones)
    scale = scale2d(1 / s, 1 / s)  # isotropic
    p_rot = 1 - torch.sqrt((1 - p).clamp(0, 1))  # rotated before or after aniso: P(either) = p
    theta = (torch.rand(B, device=dev) * 2 - 1) * math.pi
    rotate_pre = rotate2d(torch.where(torch.rand(B, device=dev) < p_rot, theta, zeros))
    s = coin(torch.exp2(torch.randn(B, device=dev) * 0.2), ones)
    aniso = scale2d(1 / s, s)  # anisotropic scaling
    theta = (torch.rand(B, device=dev) * 2 - 1) * math.pi
    rotate_post = rotate2d(torch.where(torch.rand(B, device=dev) < p_rot, theta, zeros))
    t = torch.randn(2, B, device=dev) * 0.125
    t = torch.where(torch.rand(B, device=dev) < p, t, zeros)
    xfrac = translate2d(-t[0] * W, -t[1] * H)  # fractional translation
    G_inv = torch.eye(3, device=dev).expand(B, 3, 3) @ xflip @ rotate90 @ xint  # (B, 3, 3)
    G_inv = G_inv @ scale @ rotate_pre @ aniso @ rotate_post @ xfrac

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
        # pixels -> [-1, 1] for affine_grid
        G = scale2d(2 / y.shape[3] * ones, 2 / y.shape[2] * ones) @ G
        G = G @ scale2d(shape[3] / 2 * ones, shape[2] / 2 * ones)
        grid = F.affine_grid(G[:, :2, :], shape, align_corners=False)
        y = F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        y = downsample2d(y, f.flip(0), crop=pad * 2)
        x = torch.where(moved[:, None, None, None], y, x)

    # colour, named as in the official augment.py: contrast * (x + brightness), then lumaflip,
    # hue (a rotation) and saturation about the luma axis v
    brightness = coin(torch.randn(B, device=dev) * 0.2, zeros)  # (B,), added
    contrast = coin(torch.exp2(torch.randn(B, device=dev) * 0.5), ones)  # (B,), a factor
    v = torch.full((3,), 3**-0.5, device=dev)
    vv, I3 = torch.outer(v, v), torch.eye(3, device=dev)
    i = coin(torch.floor(torch.rand(B, device=dev) * 2), zeros)
    lumaflip = I3 - 2 * vv * i[:, None, None]  # Householder reflection
    theta = coin((torch.rand(B, device=dev) * 2 - 1) * math.pi, zeros)[:, None, None]
    # K: the cross-product matrix of v
    K = torch.tensor([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], device=dev) * 3**-0.5
    hue = torch.cos(theta) * I3 + torch.sin(theta) * K + (1 - torch.cos(theta)) * vv  # Rodrigues
    s = coin(torch.exp2(torch.randn(B, device=dev)), ones)
    saturation = vv + (I3 - vv) * s[:, None, None]
    M = saturation @ hue @ lumaflip * contrast[:, None, None]  # (B, 3, 3)
    coloured = (M @ (x.reshape(B, C, H * W) + brightness[:, None, None])).reshape(B, C, H, W)
    changed = (brightness != 0) | (contrast != 1) | (i != 0) | (theta.flatten() != 0) | (s != 1)
    return torch.where(changed[:, None, None, None], coloured, x)


def ada_update(p, r_t, n_img, target=0.6, ada_kimg=500):
    """ADA sec. 3: p moves by sign(r_t - target) * n_img / (ada_kimg * 1000), so it could go from
    0 to 1 in ada_kimg thousand images; r_t = E[sign(D(x_real))] over the images since the last
    update."""
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
    lengths = grad.square().sum(2).mean(1).sqrt()  # (B,): per style, mean over the num_ws styles
    pl_mean = pl_mean.lerp(lengths.mean(), decay)
    return (lengths - pl_mean).square(), pl_mean.detach()


# --- training -----------------------------------------------------------------------------------

R1_INTERVAL = 16  # lazy R1: one regularisation step every 16 D steps (StyleGAN2 sec. 3.1)
PL_INTERVAL = 4  # lazy path length: every 4 G steps (StyleGAN2 sec. 3.2)
ADA_INTERVAL = 4  # p is adjusted every 4 steps (ADA sec. 3)
# `step` is the official loop's batch_idx: the steps done before this one. Its Greg and Dreg
# phases run if batch_idx % interval == 0, before batch_idx += 1: here `step % interval`, steps
# 0, 16, 32, ... Its ADA adjustment comes after batch_idx += 1: here `(step + 1) % ADA_INTERVAL`,
# after steps 3, 7, 11, ..., once ADA_INTERVAL steps of signs are in.


def auto_config(args):
    """Knobs left unset take the official 'auto' config for one GPU at this --res and --batch
    (stylegan2-ada-pytorch train.py's 'auto' cfg, lines 155, 165-174); z_dim defaults to w_dim."""
    args.z_dim = args.z_dim or args.w_dim
    if args.r1_gamma is None:
        args.r1_gamma = 0.0002 * args.res**2 / args.batch
    if args.ema_kimg is None:
        args.ema_kimg = args.batch * 10 / 32
    if args.cbase is None:
        args.cbase = 32768 if args.res >= 512 else 16384  # official fmaps 1, else 0.5
    lr = 0.002 if args.res >= 1024 else 0.0025
    args.lr_g, args.lr_d = args.lr_g or lr, args.lr_d or lr
    return args


def lazy_adam(module, lr, interval):
    """Adam (0, 0.99) for a network regularised every k = `interval` steps on a step of its own:
    lr * k/(k+1), beta ** (k/(k+1)) (StyleGAN2 appendix B). Frozen parameters are left out."""
    r = interval / (interval + 1)
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=lr * r, betas=(0.0, 0.99**r), eps=1e-8)


def freeze_d(D, n):
    """FreezeD (Mo et al. 2020): D's first n layers keep their weights while fine-tuning (no
    gradient, not in Adam). Layers count as the official --freezed counts them (networks.py
    DiscriminatorBlock): fromrgb, conv0, conv1, skip at the highest resolution, then conv0, conv1,
    skip of each lower block; not the 4x4 epilogue or the label mapping."""
    layers = [m for b in D.blocks for m in (b.fromrgb, b.conv0, b.conv1, b.skip) if m is not None]
    if n > len(layers):
        raise UserError(f"--freeze-d {n}: D has {len(layers)} layers (1 + 3 per resolution)")
    for m in layers[:n]:
        m.requires_grad_(False)


class ADA:
    """The augmentation probability p: adaptive (--aug ada, ADA sec. 3), fixed at --p, or no
    augmentation. p and the sign sums are tensors, checkpointed as ada_p and ada_signs."""

    def __init__(self, args, device):
        self.mode, self.target, self.kimg = args.aug, args.ada_target, args.ada_kimg
        self.n_img = args.batch * ADA_INTERVAL  # images per adjustment, over all processes
        self.p = torch.tensor(args.p if args.aug == "fixed" else 0.0, device=device)
        self.signs = torch.zeros(2, device=device)  # sum of sign(D(x_real)), count since the update

    def augment(self, x):  # every image D sees, real or fake, in D, G and R1 steps (ADA sec. 2.3)
        return augment(x, self.p) if self.mode != "none" else x

    def observe(self, logits_real):
        self.signs[0] += logits_real.detach().sign().sum()
        self.signs[1] += len(logits_real)

    def adjust(self, step):
        """After the step (see ADA_INTERVAL): p moves by ada_update, r_t = E[sign(D(x_real))] since
        the last adjustment, over all processes."""
        if self.mode != "ada" or (step + 1) % ADA_INTERVAL:
            return
        signs = self.signs.clone()
        if dist.is_initialized():
            dist.all_reduce(signs)
        self.p.copy_(ada_update(self.p, signs[0] / signs[1], self.n_img, self.target, self.kimg))
        self.signs.zero_()


def ema_beta(batch, ema_kimg):
    """Per-step decay whose half-life is ema_kimg thousand images."""
    return 0.5 ** (batch / (ema_kimg * 1000)) if ema_kimg > 0 else 0.0


def ema_half_life(step, args):
    """--ema-kimg, ramped up: at most --ema-rampup of the thousands of images seen by `step`
    (StyleGAN2-ADA's ramp), so early G_ema follows G closely; --ema-rampup 0: no ramp-up."""
    seen = step * args.batch / 1000
    return min(args.ema_kimg, seen * args.ema_rampup) if args.ema_rampup else args.ema_kimg


@torch.no_grad()
def update_ema(G_ema, G, beta):
    """G_ema <- beta * G_ema + (1 - beta) * G for parameters; buffers (BN statistics) are copied."""
    torch._foreach_lerp_(list(G_ema.parameters()), list(G.parameters()), 1.0 - beta)
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def all_reduce_grads(module):
    """Average gradients over processes, in place of DDP (why: the module docstring)."""
    params = [p for p in module.parameters() if p.grad is not None]
    if not dist.is_initialized() or not params:
        return
    flat = torch.cat([p.grad.flatten() for p in params])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(g.view_as(p))


def label_sizes(classes):
    """The Generator's and Discriminator's n_classes for a dataset's or checkpoint's classes: 0 for
    one class (unconditional), n for one attribute of n values, [n_1, ..., n_k] for several."""
    sizes = [len(values) for _, values in attributes(classes)]
    if len(sizes) > 1:
        return sizes
    return sizes[0] if sizes[0] > 1 else 0


def networks(args, n_classes, device):
    """G, D (its first --freeze-d layers frozen) and G_ema for these args, with rank 0's weights on
    every process (what DDP would do)."""
    G = Generator(
        args.res, args.z_dim, args.w_dim, n_classes, args.cbase, args.cmax, args.map_layers
    ).to(device)
    D = Discriminator(args.res, n_classes, args.cbase, args.cmax, mbstd_group=args.mbstd_group)
    D = D.to(device)
    freeze_d(D, args.freeze_d)
    if dist.is_initialized():
        for t in [*G.parameters(), *G.buffers(), *D.parameters(), *D.buffers()]:
            dist.broadcast(t.data, 0)
    return G, D, copy.deepcopy(G).eval().requires_grad_(False)


def train(args):
    check_res(args.res, args.cbase)
    run = Run(args)  # device, precision, seed, --resume: the plumbing block below
    args, device = auto_config(run.args), run.device
    columns = args.label_columns.split(",") if args.label_columns else None
    data = load_images(
        args.data, args.res, verbose=run.rank == 0, labels=args.labels, label_columns=columns
    )
    batches = Batches(
        data, args.batch // run.world, device, args.seed, run.rank, run.world, flip=args.flip
    )
    n_classes = label_sizes(data.classes)  # labelled data: conditional
    counts = class_counts(data.classes, data.labels)
    G, D, G_ema = networks(args, n_classes, device)
    opt_G, opt_D = lazy_adam(G, args.lr_g, PL_INTERVAL), lazy_adam(D, args.lr_d, R1_INTERVAL)
    ada = ADA(args, device)
    pl_mean = torch.zeros((), device=device)  # the path length target a (StyleGAN2 eq. 4)
    if run.ckpt is not None:  # a checkpoint from before attribute labels
        run.ckpt.setdefault("class_counts", counts)
    run.track(classes=data.classes, class_counts=counts, G=G, D=D, G_ema=G_ema, opt_G=opt_G,
              opt_D=opt_D, loader=batches, ada_p=ada.p, ada_signs=ada.signs,
              pl_mean=pl_mean)  # fmt: skip
    scaler_G, scaler_D = run.scaler_G, run.scaler_D  # fp16 loss scaling (no-ops in bf16, fp32)
    # --compile: torch.compile; no DDP (all_reduce_grads); R1 and path length use eager G and D
    G_train, D_train = run.wrap(G, D, ddp=False)
    r1_last, pl_last = torch.zeros((), device=device), torch.zeros((), device=device)
    z_fixed, y_fixed, cols, about = fixed_latents(data.classes, counts, args.z_dim, args.seed)
    z_fixed, y_fixed = z_fixed.to(device), y_fixed.to(device) if n_classes else None
    about = f"{len(data.labels)} images, {about}" + (" (conditional)" if n_classes else "")
    about += f" | aug {args.aug} | r1_gamma {args.r1_gamma:.4g} | ema_kimg {args.ema_kimg:.4g}"

    def grid():  # several attributes: one column per value of the second
        x = G_ema(z_fixed, y_fixed)
        return make_grid(x, nrow=cols) if cols else x

    for step in run.steps(grid=grid, about=about):
        x_real, y = next(batches)  # (B, 3, res, res) in [-1, 1], labels (B,) or (B, k)
        y = y if n_classes else None
        x_real = x_real.contiguous(memory_format=run.layout)
        z = torch.randn(x_real.shape[0], args.z_dim, device=device)

        # (1) update D: minimise softplus(D(aug(G(z)))) + softplus(-D(aug(x))), the logistic
        # loss (StyleGAN2 sec. 3), on augmented reals and fakes (ADA sec. 2.3)
        with torch.no_grad(), run.autocast:
            x_fake = G_train(z, y, mix_prob=args.style_mixing)
        with run.autocast:
            logits_real = D_train(ada.augment(x_real), y)
            logits_fake = D_train(ada.augment(x_fake), y)
            loss_D = loss_d(logits_real.float(), logits_fake.float())
        opt_D.zero_grad(set_to_none=True)
        scaler_D.scale(loss_D).backward()
        all_reduce_grads(D)
        scaler_D.step(opt_D)
        scaler_D.update()
        ada.observe(logits_real)

        # (2) lazy R1 on D: minimise gamma/2 E||grad_x D(aug(x))||^2, scaled by the interval
        # (StyleGAN2 sec. 3.1)
        if step % R1_INTERVAL == 0 and args.r1_gamma > 0:
            penalty, _ = r1_penalty(D, x_real.float(), y, ada.augment)
            opt_D.zero_grad(set_to_none=True)
            (penalty.mean() * (args.r1_gamma / 2) * R1_INTERVAL).backward()
            all_reduce_grads(D)
            opt_D.step()
            r1_last = penalty.detach().mean()

        # (3) update G: minimise softplus(-D(aug(G(z)))), a fresh z, D frozen (StyleGAN2 sec. 3)
        D.requires_grad_(False)
        with run.autocast:
            x_fake = G_train(torch.randn_like(z), y, mix_prob=args.style_mixing)
            loss_G = loss_g(D_train(ada.augment(x_fake), y).float())
        opt_G.zero_grad(set_to_none=True)
        scaler_G.scale(loss_G).backward()
        all_reduce_grads(G)
        scaler_G.step(opt_G)
        scaler_G.update()

        # (4) lazy path length on G: minimise E(||J_w^T y|| - a)^2 on half the batch (official
        # pl_batch_shrink 2), scaled by the interval (StyleGAN2 sec. 3.2, eq. 4)
        if step % PL_INTERVAL == 0 and args.pl_weight > 0:
            n = max(1, z.shape[0] // 2)
            y_pl = None if y is None else y[:n]
            img, ws = G(torch.randn_like(z[:n]), y_pl, mix_prob=args.style_mixing, return_ws=True)
            penalty, a = path_length_penalty(img, ws, pl_mean)
            pl_mean.copy_(a)
            opt_G.zero_grad(set_to_none=True)
            (penalty.mean() * args.pl_weight * PL_INTERVAL).backward()
            all_reduce_grads(G)
            opt_G.step()
            pl_last = penalty.detach().mean()
        D.requires_grad_(True)
        freeze_d(D, args.freeze_d)  # FreezeD's layers stay frozen

        update_ema(G_ema, G, ema_beta(args.batch, ema_half_life(step, args)))

        # (5) ADA: every 4 steps, p += sign(r_t - target) * images / (ada_kimg * 1000), r_t the
        # mean sign of D's real logits since the last adjustment (ADA sec. 3)
        ada.adjust(step)

        # r1, pl (the last penalties), pl_mean and p are logged every step too, so the log line
        # shows their means over the log interval
        run.log(loss_D=loss_D, loss_G=loss_G, d_real=logits_real.mean(), d_fake=logits_fake.mean(),
                r_t=logits_real.sign().mean(), r1=r1_last, pl=pl_last, pl_mean=pl_mean,
                p=ada.p)  # fmt: skip
    return G_ema


# --- sampling -----------------------------------------------------------------------------------


def attributes(classes):
    """A checkpoint's classes as [(name, values)]: subfolders or one CSV column -> one attribute."""
    return list(classes.items()) if isinstance(classes, dict) else [("class", list(classes))]


def parse_class(classes, spec):
    """--class SPEC -> {attribute index: value index}. SPEC: a value of exactly one attribute
    ("blonde"; with one attribute also its index, "3"), or name=value pairs, any subset
    ("hair=blonde,eyes=blue")."""
    attrs = attributes(classes)
    names = [name for name, _ in attrs]
    if "=" not in spec:
        if len(attrs) == 1 and spec not in attrs[0][1] and spec.isdigit():
            if int(spec) < len(attrs[0][1]):
                return {0: int(spec)}
        found = [i for i, (_, values) in enumerate(attrs) if spec in values]
        if len(found) > 1:
            several = ", ".join(names[i] for i in found)
            why = f"a value of several attributes ({several}): name it, e.g. {names[found[0]]}="
            raise UserError(f"--class {spec}: {why}{spec}")
        if not found and len(attrs) == 1:
            values = ", ".join(attrs[0][1])
            raise UserError(f"--class {spec}: not one of this checkpoint's classes: {values}")
        if not found:
            each = "; ".join(f"{name}: {', '.join(values)}" for name, values in attrs)
            raise UserError(f"--class {spec}: not a value of any attribute ({each})")
        return {found[0]: attrs[found[0]][1].index(spec)}
    fixed = {}
    for part in spec.split(","):
        name, _, value = part.partition("=")
        if name not in names:
            raise UserError(
                f"--class {spec}: no attribute '{name}' (attributes: {', '.join(names)})"
            )
        i = names.index(name)
        if i in fixed:
            raise UserError(f"--class {spec}: {name} is given twice")
        if value not in attrs[i][1]:
            raise UserError(
                f"--class {spec}: not one of the {name} values: {', '.join(attrs[i][1])}"
            )
        fixed[i] = attrs[i][1].index(value)
    return fixed


def draw_labels(classes, counts, n, gen, fixed=None):
    """n labels, (n,) for one attribute, (n, k) for several: the attributes in `fixed` ({attribute
    index: value index}) set, every other drawn i.i.d. from its training frequencies `counts`
    (each attribute's value counts)."""
    fixed, cols = fixed or {}, []
    for i, c in enumerate(counts):
        if i in fixed:
            cols.append(torch.full((n,), fixed[i], dtype=torch.long))
        else:
            p = torch.tensor(c, dtype=torch.float)
            cols.append(torch.multinomial(p, n, replacement=True, generator=gen))
    return cols[0] if len(attributes(classes)) == 1 else torch.stack(cols, 1)


def attribute_grid(classes, counts):
    """The training grid of several attributes: rows are the first attribute's values, columns the
    second's; a file repeats one z along each row, so a row differs only by the second label. Any
    further attribute is held at its most frequent value. -> y (rows * cols, k), cols, header."""
    attrs = attributes(classes)
    (down, down_values), (across, across_values) = attrs[:2]
    rows, cols = len(down_values), len(across_values)
    held = [c.index(max(c)) for c in counts]  # each attribute's most frequent value
    y = torch.tensor(held).repeat(rows * cols, 1)  # (rows * cols, k)
    y[:, 0], y[:, 1] = torch.arange(rows).repeat_interleave(cols), torch.arange(cols).repeat(rows)
    about = f"attributes {', '.join(name for name, _ in attrs)}; grid rows: {down}"
    about += f" ({', '.join(down_values)}), columns: {across} ({', '.join(across_values)})"
    about += "".join(f", {name}={values[i]}" for (name, values), i in zip(attrs[2:], held[2:]))
    return y, cols, about


def fixed_latents(classes, counts, z_dim, seed):
    """The training grid's z, labels, columns (None: 8 a row) and header. One attribute: a row per
    class, the same 8 z in every row, so that rows differ only by their label (one class: 64
    distinct z). Several: the first attribute's values down, the second's across, one z per row
    (attribute_grid)."""
    gen, attrs = torch.Generator().manual_seed(seed), attributes(classes)
    if len(attrs) > 1:
        y, cols, about = attribute_grid(classes, counts)
        return (
            torch.randn(len(attrs[0][1]), z_dim, generator=gen).repeat_interleave(cols, 0),
            y,
            cols,
            about,
        )
    values = attrs[0][1]
    if len(values) == 1:
        return (
            torch.randn(64, z_dim, generator=gen),
            torch.zeros(64, dtype=torch.long),
            None,
            "one class",
        )
    z = torch.randn(8, z_dim, generator=gen).repeat(len(values), 1)  # (8 * classes, z_dim)
    y = torch.arange(len(values)).repeat_interleave(8)
    return z, y, None, f"{len(values)} classes, grid rows top to bottom: {', '.join(values)}"


def class_counts(classes, labels):
    """The training images per value of each attribute, [[count per value] per attribute]: the
    frequencies draw_labels samples from and attribute_grid holds the other attributes at."""
    y = torch.as_tensor(labels).reshape(len(labels), -1)  # (N, k)
    return [
        torch.bincount(col, minlength=len(v)).tolist()
        for col, (_, v) in zip(y.T, attributes(classes))
    ]


ARCH = (
    "res",
    "z_dim",
    "w_dim",
    "cbase",
    "cmax",
    "map_layers",
    "mbstd_group",
)  # the arguments that shape G and D


def read_weights(path, device="cpu"):
    """A checkpoint of this file (a torch.save zip, read with weights_only=True) or an official
    network pickle (read_reference, the next section) as {"args": the sizes (ARCH), "G", "D",
    "G_ema", "classes"[, "class_counts"]}: what load_generator and --init read."""
    device = check_device(device)
    if os.path.isfile(path):
        with open(path, "rb") as f:
            head = f.read(4)  # a torch file: a zip, or (before torch 1.6) a pickled magic number
            if head not in (b"PK\x03\x04", b"\x80\x02\x8a\n"):  # else an official pickle
                return read_reference(path)
    ckpt = load_checkpoint(path, device)
    return dict(ckpt, args={k: ckpt["args"][k] for k in ARCH})


def load_generator(path, device="cpu"):
    """Checkpoint -> G_ema in eval mode, with .res, .z_dim, .c_dim, .classes and .class_counts (the
    training images per attribute value) for generate()."""
    ckpt = read_weights(path, device)
    a = ckpt["args"]
    G = Generator(
        a["res"],
        a["z_dim"],
        a["w_dim"],
        label_sizes(ckpt["classes"]),
        a["cbase"],
        a["cmax"],
        a["map_layers"],
    ).to(device)
    G.load_state_dict(ckpt["G_ema"] if ckpt["G_ema"] is not None else ckpt["G"])  # no EMA: G
    G.classes, G.truncation_cutoff = ckpt["classes"], None
    # checkpoints from before attribute labels have no counts: uniform
    uniform = [[1] * len(values) for _, values in attributes(G.classes)]
    G.class_counts = ckpt.get("class_counts", uniform)
    return G.eval().requires_grad_(False)


def check_labels(classes, y, n):
    """generate()'s y for n images as a long tensor: an int or (n,) labels for one attribute,
    (n, k) for k. A shape or value index that does not fit the classes is a UserError that says
    what fits, in the words of --class."""
    attrs = attributes(classes)
    k = len(attrs)
    y = torch.as_tensor(y, dtype=torch.long)
    y = y.expand(n) if y.dim() == 0 and k == 1 else y
    if y.shape != ((n,) if k == 1 else (n, k)):
        got = f"y={y.item()}" if y.dim() == 0 else f"y of shape {tuple(y.shape)}"
        if k == 1:
            raise UserError(f"{got}: give an int or ({n},) labels for {n} images")
        names = ", ".join(name for name, _ in attrs)
        fits = f"give ({n}, {k}) labels, one column per attribute"
        raise UserError(f"{got}: this checkpoint has {k} attributes ({names}); {fits}")
    for j, ((name, values), col) in enumerate(zip(attrs, y.reshape(n, k).T)):
        bad = col[(col < 0) | (col >= len(values))][:1].tolist()
        fits = f"0 to {len(values) - 1} ({', '.join(values)})"
        if bad and k == 1:
            raise UserError(f"y={bad[0]}: not one of this checkpoint's classes: {fits}")
        if bad:
            raise UserError(f"y[:, {j}]={bad[0]}: not one of the {name} values: {fits}")
    return y


def labels(G, n, y=None, seed=0):
    """Labels for n images of a conditional G: y as given (an int, or (n,) or (n, k) labels,
    checked by check_labels); else with one attribute the classes in turn, arange(n) % classes,
    and with several each attribute drawn from its training frequencies (seeded by `seed`). An
    unconditional G gets None, whatever y."""
    if not G.c_dim:
        return None
    if y is None and len(G.mapping.sizes) > 1:
        return draw_labels(G.classes, G.class_counts, n, torch.Generator().manual_seed(seed))
    if y is None:
        return torch.arange(n) % G.c_dim
    return check_labels(G.classes, y, n)


def ws_for(G, z, y, truncation):
    """Styles (B, num_ws, w_dim) on G's device, truncated towards w_avg with psi = truncation on
    the first G.truncation_cutoff styles (StyleGAN sec. 5.2)."""
    device, psi = next(G.parameters()).device, 1.0 if truncation is None else truncation
    y = None if y is None else y.to(device)
    return G.mapping(z.to(device), y, psi, getattr(G, "truncation_cutoff", None))


@torch.no_grad()
def generate(G, n, seed=0, truncation=None, y=None):
    """n images in [-1, 1], (n, 3, res, res) float32 on the CPU; the same seed, the same images.
    truncation: psi in W (w = w_avg + psi (w - w_avg)) on the first G.truncation_cutoff styles.
    y: an int class index, (n,) or (n, k) labels; None: one attribute's classes in turn, several
    attributes drawn from their training frequencies (seeded by `seed`). Unconditional G: ignored.
    """
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    y, images = labels(G, n, y, seed), []
    for i in range(0, n, 256):
        ws = ws_for(G, z[i : i + 256], None if y is None else y[i : i + 256], truncation)
        images.append(G.synthesis(ws).float().clamp(-1, 1).cpu())
    return torch.cat(images)


@torch.no_grad()
def interpolation_frames(G, n, seed=0, truncation=None, y=None, keys=4, steps=16):
    """Frames of n images, each moving linearly in W (the space the paper measures path lengths
    in, StyleGAN sec. 4.2) through `keys` latents and back; each image keeps its class (y as in
    generate())."""
    z = torch.randn(n * keys, G.z_dim, generator=torch.Generator().manual_seed(seed))
    y = labels(G, n, y, seed)
    ws = ws_for(G, z, None if y is None else torch.cat([y] * keys), truncation)
    ws, frames = ws.view(keys, n, G.num_ws, -1), []
    for k in range(keys):
        for t in torch.linspace(0, 1, steps + 1)[:-1]:
            w = ws[k].lerp(ws[(k + 1) % keys], t.item())
            frames.append(make_grid(G.synthesis(w).float().cpu()))
    return frames


@torch.no_grad()
def style_mixing_grid(G, n, seed=0, truncation=None, y=None, coarse=4):
    """StyleGAN fig. 3: the top row and left column are sources B and A; cell (i, j) takes A_i's
    styles except the first `coarse` (the 4x4 and 8x8 layers: pose, face shape), which come from
    B_j. y as in generate(), for the 2n sources."""
    z = torch.randn(2 * n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    ws = ws_for(G, z, labels(G, 2 * n, y, seed), truncation)
    wa, wb = ws[:n], ws[n:]
    corner = torch.ones(1, 3, G.res, G.res, device=ws.device)
    rows = [torch.cat([corner, G.synthesis(wb)])]
    for i in range(n):
        mixed = wa[i : i + 1].repeat(n, 1, 1)
        mixed[:, :coarse] = wb[:, :coarse]
        rows.append(torch.cat([G.synthesis(wa[i : i + 1]), G.synthesis(mixed)]))
    return torch.cat(rows).float().clamp(-1, 1).cpu()


def sample(args):
    if args.interp and args.mixing:
        raise UserError("choose one of --interp, --mixing")
    G = load_generator(args.sample, setup_device(args.device)[0])
    G.truncation_cutoff = args.truncation_cutoff
    tag, y, k = f"seed{args.seed}", None, max(1, math.isqrt(args.n))
    if args.class_name is not None and not G.c_dim:
        raise UserError("this checkpoint was trained unconditionally (one class): drop --class")
    if args.class_name is not None:  # the named values set, other attributes drawn
        fixed, attrs = parse_class(G.classes, args.class_name), attributes(G.classes)
        tag += "".join(f"_{attrs[a][1][v]}" for a, v in fixed.items())
        gen = torch.Generator().manual_seed(args.seed)
        n = 2 * k if args.mixing and not args.interp else args.n  # --mixing: 2k sources
        y = draw_labels(G.classes, G.class_counts, n, gen, fixed)
    if args.truncation is not None:  # the cutoff does nothing without it
        tag += f"_psi{args.truncation:g}"
        tag += f"_cutoff{args.truncation_cutoff}" if args.truncation_cutoff is not None else ""
    folder = os.path.dirname(args.sample)
    if args.interp:
        frames = interpolation_frames(G, args.n, args.seed, args.truncation, y)
        path = save_gif(frames, os.path.join(folder, f"interp_{tag}.gif"))
    elif args.mixing:  # sqrt(n) sources per side
        grid = style_mixing_grid(G, k, args.seed, args.truncation, y)
        path = save_grid(grid, os.path.join(folder, f"mixing_{tag}.png"), nrow=k + 1)
    else:
        images = generate(G, args.n, args.seed, args.truncation, y)
        path = save_grid(images, os.path.join(folder, f"samples_{tag}.png"))
    print(path)


# --- the official files: stylegan2-ada-pytorch and TensorFlow StyleGAN2 network pickles ---------
# Nothing in a file runs: SafeUnpickler resolves only the globals in SAFE, each to a function here
# that makes tensors, numbers or plain records. The module source that NVlabs pickles carry (and
# their own loaders execute) stays an unread string.


class Persistent(dict):
    """torch_utils.persistence._reconstruct_persistent_obj(meta): a stylegan2-ada-pytorch network
    as its meta dict, {class_name, state: the nn.Module's __dict__ (_parameters, _buffers,
    _modules, _init_kwargs), module_src (not read), ...}."""


class TFNetwork:
    """dnnlib.tflib.network.Network: its pickled state as attributes (version, static_kwargs,
    components, variables: [(name, numpy array)], ...)."""


class EasyDict(dict):
    """dnnlib's EasyDict (the official kwargs) as a dict."""


class NPDtype:
    """numpy.dtype(code, align, copy) and its state (byte order): numbers only."""

    def __init__(self, code, align=False, copy=True):
        codes = dict(f2=torch.float16, f4=torch.float32, f8=torch.float64, i4=torch.int32,
                     i8=torch.int64, u1=torch.uint8, b1=torch.bool)  # fmt: skip
        self.torch, self.order = codes[code], "<"

    def __setstate__(self, state):
        self.order = state[1]


class NPArray:
    """numpy's _reconstruct(ndarray, (0,), b'b'), then its state (version, shape, dtype, Fortran
    order, bytes): the values as .tensor."""

    def __setstate__(self, state):
        _, shape, dtype, fortran, raw = state
        if fortran or dtype.order == ">":
            raise ValueError("a numpy array not in C order or not little-endian")
        self.tensor = torch.frombuffer(bytearray(raw), dtype=dtype.torch).reshape(shape)


def np_scalar(dtype, raw):  # numpy.float64(...) and the like -> a Python number
    return torch.frombuffer(bytearray(raw), dtype=dtype.torch).item()


def storage_from_bytes(data):  # a torch.save stream (the original: torch.load without weights_only)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


SAFE = {  # every global an official file may name, and what it becomes here
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("_codecs", "encode"): lambda text, encoding="latin1": text.encode("latin-1"),  # protocol 2
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): storage_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): Persistent,
    ("dnnlib.tflib.network", "Network"): TFNetwork,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("numpy", "dtype"): NPDtype,
    ("numpy", "ndarray"): NPArray,
}
for np_core in ("numpy.core", "numpy._core"):  # numpy 1 and 2
    SAFE[np_core + ".multiarray", "_reconstruct"] = lambda *args: NPArray()
    SAFE[np_core + ".multiarray", "scalar"] = np_scalar


class SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):  # every global the pickle names comes through here
        if (module, name) not in SAFE:
            raise UserError(f"refused global {module}.{name}; nothing in the file was run")
        return SAFE[module, name]


# the official networks' settings, named here: (stylegan2-ada-pytorch's init_kwargs key, the TF
# networks' static_kwargs key, the default[, legacy.py's TF default where it differs])
G_CONFIG = {
    "z_dim": ("z_dim", "latent_size", 512),
    "c_dim": ("c_dim", "label_size", 0),
    "w_dim": ("w_dim", "dlatent_size", 512),
    "res": ("img_resolution", "resolution", 1024),
    "channels": ("img_channels", "num_channels", 3),
    "map_layers": ("mapping_kwargs.num_layers", "mapping_layers", 8),
    "embed": ("mapping_kwargs.embed_features", "label_fmaps", None),
    "map_width": ("mapping_kwargs.layer_features", "mapping_fmaps", None),
    "map_act": ("mapping_kwargs.activation", "mapping_nonlinearity", "lrelu"),
    "lr_mul": ("mapping_kwargs.lr_multiplier", "mapping_lrmul", 0.01),
    "cbase": ("synthesis_kwargs.channel_base", "fmap_base", 32768, 16384),  # TF: x2 (legacy.py)
    "cmax": ("synthesis_kwargs.channel_max", "fmap_max", 512),
    "architecture": ("synthesis_kwargs.architecture", "architecture", "skip"),
    "filter": ("synthesis_kwargs.resample_filter", "resample_kernel", FIR),
    "noise": ("synthesis_kwargs.use_noise", "use_noise", True),
    "act": ("synthesis_kwargs.activation", "nonlinearity", "lrelu"),
}
D_CONFIG = {
    "c_dim": ("c_dim", "label_size", 0),
    "res": ("img_resolution", "resolution", 1024),
    "channels": ("img_channels", "num_channels", 3),
    "architecture": ("architecture", "architecture", "resnet"),
    "cbase": ("channel_base", "fmap_base", 32768, 16384),
    "cmax": ("channel_max", "fmap_max", 512),
    "cmap": ("cmap_dim", "mapping_fmaps", None),
    "act": ("block_kwargs.activation", "nonlinearity", "lrelu"),
    "filter": ("block_kwargs.resample_filter", "resample_kernel", FIR),
    "map_layers": ("mapping_kwargs.num_layers", "mapping_layers", 8, 0),
    "embed": ("mapping_kwargs.embed_features", "mapping_fmaps", None),
    "map_width": ("mapping_kwargs.layer_features", "mapping_fmaps", None),
    "map_act": ("mapping_kwargs.activation", "nonlinearity", "lrelu"),
    "lr_mul": ("mapping_kwargs.lr_multiplier", "mapping_lrmul", 0.01, 0.1),
    # TF: the TF networks' own default (legacy.py's None, the whole batch, is not theirs)
    "mbstd_group": ("epilogue_kwargs.mbstd_group_size", "mbstd_group_size", 4),
    "mbstd_channels": ("epilogue_kwargs.mbstd_num_channels", "mbstd_num_features", 1),
    "out_act": ("epilogue_kwargs.activation", "nonlinearity", "lrelu"),
}
# TF settings that leave the function as it is (precision, truncation, training): skipped
TF_IGNORED = set(
    "w_avg_beta num_fp16_res conv_clamp truncation_psi truncation_cutoff style_mixing_prob"
    " structure freeze_layers".split()
)


def tf_noise(i):  # noise i: 4x4 conv1 (i = 0), then conv0 (i odd) and conv1 (i even) per resolution
    return f"synthesis.b{2 ** ((i + 5) // 2)}.conv{1 - i % 2}.noise_const"


# TF variable -> official name, as legacy.py converts them (G's, then D's)
TF_NAMES = [
    (r"dlatent_avg", "mapping.w_avg"),
    (r"(mapping/)?LabelEmbed/", "mapping.embed."),
    (r"mapping/Dense(\d+)/", r"mapping.fc\1."),
    (r"Mapping(\d+)/", r"mapping.fc\1."),
    (r"synthesis/4x4/Const/", "synthesis.b4."),
    (r"synthesis/4x4/Conv/", "synthesis.b4.conv1."),
    (r"synthesis/noise(\d+)", lambda m: tf_noise(int(m[1]))),
    (
        r"(synthesis/)?(\d+)x\d+/(Conv0|Conv1|ToRGB|FromRGB|Skip)(_up|_down)?/",
        lambda m: f"{'synthesis.' if m[1] else ''}b{m[2]}.{m[3].lower()}.",
    ),  # fmt: skip
    (r"4x4/Conv/", "b4.conv."),
    (r"4x4/Dense0/", "b4.fc."),
    (r"Output/", "b4.out."),
]


def official_config(table, kwargs, tf=False):
    """A network's settings (G_CONFIG, D_CONFIG) from stylegan2-ada-pytorch's init_kwargs, or (tf)
    from a TF network's static_kwargs, each with its code's default."""
    if tf and (unknown := set(kwargs) - {row[1] for row in table.values()} - TF_IGNORED):
        raise UserError(f"an unknown TensorFlow network setting {sorted(unknown)[0]}")
    config = {}
    for name, (key, tf_key, default, *tf_default) in table.items():
        found, (*parents, key) = kwargs, key.split(".")
        for p in parents:  # e.g. synthesis_kwargs.channel_base
            found = found.get(p) or {}
        if tf:
            config[name] = kwargs.get(tf_key, [*tf_default, default][0])
        else:
            config[name] = found.get(key, default)
    config["cbase"] *= 2 if tf else 1  # TF: min(fmap_base / 2^(log2 r - 1), fmap_max) at r
    return config


def read_pytorch(data):
    """A stylegan2-ada-pytorch pickle's dict -> G's settings, D's (or None), official state dicts."""
    G, D = data.get("G_ema", data.get("G")), data.get("D")
    g = official_config(G_CONFIG, G["state"]["_init_kwargs"])
    synthesis = G["state"]["_modules"]["synthesis"]["state"]["_modules"]  # StyleGAN3: input, L0_..
    g["kind"] = ("StyleGAN3 " if "input" in synthesis else "StyleGAN2 ") + G["class_name"]
    d = None if D is None else official_config(D_CONFIG, D["state"]["_init_kwargs"])
    if d is not None:
        d["kind"] = "StyleGAN2 " + D["class_name"]
    return g, d, {k: data.get(k) and pytorch_tensors(data[k]) for k in ("G", "D", "G_ema")}


def pytorch_tensors(rec, prefix=""):
    """A persistence record's parameters and buffers by their official state_dict names (FreezeD
    keeps frozen layers' weights as buffers: both are read)."""
    groups = rec["state"]["_parameters"], rec["state"]["_buffers"]
    out = {prefix + k: v for group in groups for k, v in group.items() if v is not None}
    for k, m in rec["state"]["_modules"].items():
        out |= pytorch_tensors(m, f"{prefix}{k}.") if m is not None else {}
    return out


def read_tf(data):
    """A TF pickle's (G, D, Gs) -> G's settings, D's, official state dicts, as legacy.py reads it."""
    tables = G_CONFIG, D_CONFIG, G_CONFIG
    g, d, _ = [official_config(t, n.static_kwargs, tf=True) for t, n in zip(tables, data)]
    g["kind"], d["kind"] = "StyleGAN2 Generator", "StyleGAN2 Discriminator"
    return g, d, {k: tf_tensors(n) for k, n in zip(("G", "D", "G_ema"), data)}


def tf_tensors(net, prefix=""):
    """A TF network's variables by their official names (TF_NAMES), converted as legacy.py does:
    dense weights transposed, conv weights [k, k, in, out] -> [out, in, k, k] (G's upsampling
    conv0 flipped), styles' bias + 1, the const and noise inputs without their batch axes."""
    if net.version < 4:
        raise UserError("a TensorFlow pickle older than StyleGAN2 (Network version < 4)")
    out = {}
    for name, array in net.variables:
        name = prefix + name
        if m := re.match(r"(synthesis/)?(ToRGB|FromRGB)_lod", name):
            raise UserError(f"its {m[2]}_lod variables make it the 'orig' network")
        for pattern, rename in TF_NAMES:
            if m := re.match(pattern, name):
                break
        else:
            continue  # as legacy.py: a variable it has no name for is left out
        name = (rename(m) if callable(rename) else m.expand(rename)) + name[m.end() :]
        name = name.replace("mod_weight", "affine.weight").replace("mod_bias", "affine.bias")
        t = array.tensor.float()
        if name.endswith("noise_const"):
            t = t[0, 0]
        elif name.endswith(".const"):
            t = t[0]
        elif name.endswith("affine.bias"):
            t = t + 1
        elif name.endswith("weight") and t.dim() == 2:
            t = t.t()
        elif name.endswith("weight"):
            t = t.flip(0, 1) if re.match(r"synthesis\.b\d+\.conv0", name) else t
            t = t.permute(3, 2, 0, 1)
        out[name] = t
    for k, component in net.components.items():
        out |= tf_tensors(component, f"{prefix}{k}/")
    return out


def check_official(g, d):
    """One line for the first setting of the file's G (g) and D (d; None: it has none) that this
    file does not build."""
    w, c4, c_dim, res = g["w_dim"], min(g["cbase"] // 4, g["cmax"]), g["c_dim"], g["res"]
    nets = [g] if d is None else [g, d]
    acts = {n[k] for n in nets for k in ("act", "map_act", "out_act") if k in n}
    wants = [  # (what, the file's, this file's)
        ("G", g["kind"], "StyleGAN2 Generator"),
        ("D", d and d["kind"], d and "StyleGAN2 Discriminator"),
        ("resolution", res, res if 32 <= res <= 1024 and res & (res - 1) == 0 else "32 to 1024"),
        ("label size c_dim", c_dim, c_dim if c_dim != 1 else "0 (unconditional) or 2 and up"),
        ("G architecture", g["architecture"], "skip"),
        ("D architecture", d and d["architecture"], d and "resnet"),
        ("image channels", {n["channels"] for n in nets}, {3}),
        ("resampling filter", {tuple(n["filter"]) for n in nets}, {tuple(FIR)}),
        ("G noise inputs", g["noise"], True),
        ("activations", acts, {"lrelu"}),
        ("G mapping widths", {g["embed"] or w, g["map_width"] or w}, {w}),
        ("D minibatch std channels", d and d["mbstd_channels"], d and 1),
        *[(f"D {k} (G's: {g[k]})", d[k], g[k]) for k in ("res", "c_dim", "cbase", "cmax") if d],
    ]
    if d is not None and c_dim:  # the label projection: 8 layers of the 4x4 width
        widths = {d["cmap"] or c4, d["embed"] or c4, d["map_width"] or c4}
        wants += [("D label mapping layers", d["map_layers"], 8), ("D label widths", widths, {c4})]
    for what, theirs, ours in wants:
        if theirs != ours:
            raise UserError(f"its {what}: {theirs}; {MODEL}.py builds {ours}")


def our_names(sd, res, lr_mul):
    """Official state_dict names -> ours: mapping.fc{i} -> mapping.net.{i} (weights and biases
    rescaled from their lr multiplier to our 0.01: the same function), G's synthesis.b{r} ->
    blocks.{log2 r - 2}, D's b{r} -> blocks.{log2 res - log2 r} and its 4x4 epilogue b4.conv, fc,
    out -> conv, fc, out; the FIR filters (constants) dropped."""
    n = res.bit_length() - 3  # G's blocks: 4x4 (0) to res (n); D's: res (0) to 8x8 (n - 1)
    prefixes = {f"synthesis.b{4 << i}.": f"blocks.{i}." for i in range(n + 1)}
    prefixes |= {f"b{res >> i}.": f"blocks.{i}." for i in range(n)} | {"b4.": ""}
    out = {}
    for k, v in sd.items():
        if k.endswith("resample_filter"):
            continue
        if re.match(r"mapping\.fc\d+\.", k):
            k, v = "mapping.net." + k.removeprefix("mapping.fc"), v * (lr_mul / 0.01)
        old = next((p for p in prefixes if k.startswith(p)), "")
        out[prefixes.get(old, "") + k[len(old) :]] = v.detach().float().contiguous()
    return out


def fit(name, module, sd):
    """sd checked against our module's names and shapes: the first difference is one line. A w_avg
    the file lacks (D's label mapping keeps one here, unused) is zeros."""
    want = module.state_dict()
    if "mapping.w_avg" in want:
        sd.setdefault("mapping.w_avg", torch.zeros(want["mapping.w_avg"].shape))
    for k in sorted(want.keys() | sd.keys()):
        theirs = list(sd[k].shape) if k in sd else "absent"
        ours = list(want[k].shape) if k in want else "absent"
        if theirs != ours:
            raise UserError(f"its {name}'s {k} is {theirs}; in {MODEL}.py {ours}")
    return sd


def read_reference(path):
    """A stylegan2-ada-pytorch network pickle (a dict of G, D, G_ema as persistence records) or a
    TensorFlow StyleGAN2(-ADA) pickle (a tuple G, D, Gs of Network records) -> read_weights' dict,
    G, D, G_ema None where the file has none. Anything else, a truncated file, or a network this
    file does not build: one UserError line."""
    unreadable = f"{path} is not a readable checkpoint or network pickle"
    try:
        with open(path, "rb") as f:
            data = SafeUnpickler(f).load()
        if isinstance(data, dict) and isinstance(data.get("G_ema", data.get("G")), Persistent):
            g, d, nets = read_pytorch(data)
        elif isinstance(data, tuple) and [type(n) for n in data] == [TFNetwork] * 3:
            g, d, nets = read_tf(data)
        else:
            raise UserError("neither a stylegan2-ada-pytorch nor a TensorFlow StyleGAN2 pickle")
        check_official(g, d)
        a, n = {k: g.get(k) for k in ARCH}, g["c_dim"]
        a["mbstd_group"] = (d and d["mbstd_group"]) or 4  # None, the whole batch: groups of 4
        G = Generator(a["res"], a["z_dim"], a["w_dim"], n, a["cbase"], a["cmax"], a["map_layers"])
        D = Discriminator(a["res"], n, a["cbase"], a["cmax"])  # for their names and shapes
        weights = dict(args=a, classes=[str(i) for i in range(n)] or [""])
        for k, net, config in (("G", G, g), ("D", D, d), ("G_ema", G, g)):
            sd = nets[k] and our_names(nets[k], a["res"], config["lr_mul"])
            weights[k] = sd and fit(k, net, sd)
        return weights
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    except EOFError:
        raise UserError(f"{unreadable} (it ends early: truncated?)") from None
    except Exception as e:  # a damaged file, a record without what the official code writes
        why = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"{unreadable} ({type(e).__name__}: {why})") from None


# bf16 on a CPU: channels_last measured faster for this model's G and D step, 64x64 (fp32 NCHW = 1x:
# 1.98x vs 1.82x; README, CPU table). fp32 stays NCHW on a CPU: the same numbers as before
CPU_CHANNELS_LAST = True


# --- plumbing: the same in every model file (a test checks); skip it on a first read -------------


class Run:
    """Device, precision, DDP, seeding and resume; `for step in run.steps(grid, about)` yields each
    step, then logs, writes grids and checkpoints, saves on Ctrl-C, and stops on NaN/inf."""

    def __init__(self, args):
        self.args, self.ckpt = start_or_resume(args)
        self.device, self.rank, self.world = setup_device(self.args.device)
        self.say = print if self.rank == 0 else (lambda *text, **kw: None)
        self.precision, self.why = choose_precision(self.args.precision, self.device)
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        self.autocast = torch.autocast(self.device.type, dtype, enabled=dtype is not None)
        # channels_last: convolutions without layout transposes, on tensor cores (CUDA) or in
        # oneDNN's bf16 kernels (a CPU in bf16, where this model measured faster: CPU_CHANNELS_LAST)
        cpu_bf16 = self.device.type == "cpu" and self.precision == "bf16"
        fast = is_cuda(self.device) or (cpu_bf16 and CPU_CHANNELS_LAST)
        self.layout = torch.channels_last if fast else torch.contiguous_format
        # one GradScaler per optimizer: fp16 needs loss scaling, bf16 and fp32 do not
        fp16 = self.precision == "fp16"
        self.scaler_G = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_D = torch.amp.GradScaler(self.device.type, enabled=fp16)
        if self.args.batch % self.world:
            raise UserError(f"--batch {self.args.batch} must divide by {self.world} processes")
        torch.manual_seed(self.args.seed + self.rank)
        self.step, self.state, self.sums, self.n, self.signum = 0, {}, {}, 0, None
        self.agreed = False  # every rank stops at this step: the last one, Ctrl-C or NaN/inf

    def track(self, **state):
        """What a checkpoint holds besides args, step and RNG: objects with a state_dict, tensors,
        and values that must match on resume (class names, given first). --resume loads them."""
        self.state = dict(state, scaler_G=self.scaler_G, scaler_D=self.scaler_D)
        ckpt, self.ckpt = self.ckpt or {}, None  # loaded here, not kept for the whole run
        if "init" in ckpt:
            ckpt = self.start_from(ckpt)
        for k, v in self.state.items() if ckpt else ():
            if hasattr(v, "load_state_dict"):
                v.load_state_dict(ckpt[k])
            elif torch.is_tensor(v):
                v.copy_(ckpt[k])
            elif v != ckpt[k]:
                raise UserError(f"this run's {k} are {v}; {self.args.out} was trained on {ckpt[k]}")
        if ckpt:
            self.step = ckpt["step"]
            self.say(f"resuming {self.args.out}/ckpt.pt at step {self.step}/{self.args.steps}")
        rng = ckpt["rng"][self.rank] if ckpt and len(ckpt["rng"]) == self.world else None
        if rng:  # each process continues its own noise (with another number of them: new noise)
            torch.set_rng_state(rng["cpu"].cpu())
            if is_cuda(self.device) and "cuda" in rng:
                torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)
        for m in state.values():
            if isinstance(m, nn.Module):
                m.to(memory_format=self.layout)

    def start_from(self, weights):
        """--init: G, D and G_ema from the file (G_ema as its G where it has none, D as initialised
        where it has no D). Nothing else: the run starts at step 0. -> {} (nothing to resume)"""
        path, nets = weights["init"], dict(G=weights.get("G"), D=weights.get("D"))
        nets["G"] = nets["G"] if nets["G"] is not None else weights.get("G_ema")
        nets["G_ema"] = weights["G_ema"] if weights.get("G_ema") is not None else nets["G"]
        theirs, ours = weights.get("classes"), self.state.get("classes")
        if theirs is not None and ours is not None:  # a CSV's attributes: {name: count}
            if (theirs := class_sizes(theirs)) != (ours := class_sizes(ours)):
                raise UserError(f"{path} has {theirs} classes, this data {ours}")
        for k, sd in nets.items():
            try:
                sd is None or self.state[k].load_state_dict(sd)
            except RuntimeError as e:  # a shape that differs: the first line that says which
                why = next((s.strip() for s in str(e).splitlines()[1:] if s.strip()), str(e))
                raise UserError(f"--init {path}: its {k} does not fit this run ({why})") from None
        kept = ", ".join(k for k, sd in nets.items() if sd is not None)
        self.say(f"starting from {path}: {kept}" + ("" if nets["D"] else "; D as initialised"))
        return {}

    def wrap(self, *models, ddp=True):  # the modules as the step calls them
        models = [DDP(m) if ddp and self.world > 1 else m for m in models]
        return [torch.compile(m) if self.args.compile else m for m in models]

    def log(self, **values):  # summed on the device: nothing syncs until the log line
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
        self.n += 1

    def steps(self, grid, about):
        a, out = self.args, self.args.out
        n = {k: sum(p.numel() for p in self.state[k].parameters()) / 1e6 for k in "GD"}
        self.say(
            f"{MODEL} | {a.data} at {a.res}x{a.res}: {about} | G {n['G']:.2f}M D {n['D']:.2f}M"
            f" params | {self.device} {self.precision} ({self.why}) | batch {a.batch} on {self.world}"
            f" process(es) | out {out}"
        )
        main = threading.current_thread() is threading.main_thread()  # handlers only there
        old = {s: signal.signal(s, self.on_signal) for s in (signal.SIGINT, signal.SIGTERM) if main}
        self.t_log, self.step_log = time.time(), self.step
        try:
            os.makedirs(f"{out}/samples", exist_ok=True)
            while self.step < a.steps:
                yield self.step
                self.step = step = self.step + 1
                if step % a.log_every == 0 or step == a.steps:
                    self.write_log()
                t_pause = time.time()  # grids and checkpoints are left out of img/s
                if sample_due(step, a) and self.rank == 0:
                    with torch.no_grad():
                        save_samples(out, step, grid())
                if (self.world == 1 or step % 10 == 0) and any_rank(self.signum, self.device):
                    self.agreed = True
                    self.save()
                    self.say(f"stopped at step {step}: saved {out}/ckpt.pt; continue with --resume")
                    raise SystemExit(130 if self.signum == signal.SIGINT else 143)
                if step % a.ckpt_every == 0 or step == a.steps:
                    self.save()
                self.t_log += time.time() - t_pause
            self.agreed = True
        except OSError as e:  # a full disk, a folder without write permission
            raise UserError(f"could not write {e.filename}: {e.strerror}; {self.kept()}") from None
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            if dist.is_initialized():
                # a process that exits while the others still exchange its last collective (the
                # checkpoint's all_gather) can abort at exit: all meet first, if all got here
                if self.agreed:
                    dist.barrier()
                dist.destroy_process_group()
        self.say(f"done: {out}/ckpt.pt, samples in {out}/samples, loss curve {out}/loss.png")

    def write_log(self):  # means since the last line, img/s, memory, eta: stdout and log.jsonl
        self.check_finite()  # the GPU syncs here, on log steps only
        a, now = self.args, time.time()
        rec = dict(step=self.step, steps=a.steps, kimg=self.step * a.batch / 1000)
        rec |= zip(self.sums, torch.stack([*self.sums.values()]).div(self.n).tolist())
        rec["img_s"] = (self.step - self.step_log) * a.batch / max(now - self.t_log, 1e-9)
        if is_cuda(self.device):
            rec["mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        rec["eta_s"] = (a.steps - self.step) * a.batch / max(rec["img_s"], 1e-9)
        self.sums, self.n, self.t_log, self.step_log = {}, 0, now, self.step
        self.say(log_line(rec), flush=True)
        if self.rank == 0:
            with naming(f"{a.out}/log.jsonl") as path, open(path, "a") as f:
                f.write(json.dumps(dict(rec, time=now)) + "\n")

    def on_signal(self, signum, frame):  # a second Ctrl-C stops at once
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def check_finite(self):  # losses since the last log line and all weights, on every rank
        nets = [m for m in self.state.values() if isinstance(m, nn.Module)]
        tensors = [*self.sums.values(), *(p for m in nets for p in m.parameters())]
        if any_rank(not torch.stack([t.isfinite().all() for t in tensors]).all(), self.device):
            self.agreed = True
            why = f"loss or weights became NaN/inf by step {self.step}"
            raise UserError(f"{why}; stopped without saving ({self.kept()})")

    def kept(self):  # for an error: where the last good checkpoint is
        path = f"{self.args.out}/ckpt.pt"
        return f"the last good checkpoint is {path}" if os.path.exists(path) else "none was saved"

    def save(self):  # all ranks give their RNG state; rank 0 writes a temporary file, renamed
        self.check_finite()
        rng = {"cpu": torch.get_rng_state()}
        if is_cuda(self.device):
            rng["cuda"] = torch.cuda.get_rng_state(self.device).cpu()
        rngs = [rng] * self.world
        if dist.is_initialized():
            dist.all_gather_object(rngs, rng)
        ckpt = dict(model=MODEL, args=vars(self.args), step=self.step, rng=rngs)
        for k, v in self.state.items():
            ckpt[k] = v.state_dict() if hasattr(v, "state_dict") else v
        path = f"{self.args.out}/ckpt.pt"
        if self.rank == 0:
            data = io.BytesIO()  # serialised first: a full disk then fails in a plain write
            torch.save(ckpt, data)
            try:
                with naming(path), open(path + ".tmp", "wb") as f:
                    f.write(data.getbuffer())
                    os.fsync(f.fileno())
                os.replace(path + ".tmp", path)
            finally:  # no partial file is left; the last good ckpt.pt stays
                if os.path.exists(path + ".tmp"):
                    os.remove(path + ".tmp")


def is_cuda(device):  # every CUDA-only line asks this first (tests fake CUDA through it)
    return device.type == "cuda"


@contextlib.contextmanager
def naming(path):  # an OSError inside names `path` (a full disk's names no file)
    try:
        yield path
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None


def setup_device(name):
    """auto: cuda, else mps, else cpu. cuda: cuda:LOCAL_RANK under torchrun (with DDP), else 0."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = check_device(name, int(os.environ.get("LOCAL_RANK", 0)) if world > 1 else None)
    if is_cuda(device):
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")  # TF32 matmuls
        torch.backends.cudnn.allow_tf32 = True  # TF32 convolutions
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    if world > 1 and not dist.is_initialized():
        nccl = device.type == "cuda"
        dist.init_process_group("nccl" if nccl else "gloo", device_id=device if nccl else None)
    return device, rank, world


def choose_precision(asked, device):
    """--precision -> (fp32, bf16 or fp16; why, for the start line). auto: bf16 where autocast has
    native bf16 kernels (a CUDA GPU that supports it; a CPU with AVX512-BF16 or AMX, as torch
    reports it), else fp32. bf16 asked on a CPU without them runs emulated: slower than fp32."""
    if is_cuda(device):
        native, where = torch.cuda.is_bf16_supported(), "this GPU"
    else:  # oneDNN's bf16 kernels need AVX512-BF16 or AMX tiles: torch.cpu's own probes
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        native = device.type == "cpu" and any(getattr(torch.cpu, p, bool)() for p in probes)
        where = f"this {device.type.upper()}"
    if asked == "auto":
        has = "has" if native else "has no"
        return ("bf16" if native else "fp32"), f"auto: {where} {has} native bf16"
    if asked == "bf16" and device.type == "cpu" and not native:
        return asked, f"{where} has no native bf16: emulated, slower than fp32"
    return asked, "as asked"


def check_device(name, local_rank=None):
    """The torch.device for a --device value (local_rank: under torchrun); one that this machine
    lacks is a UserError, for the command line and load_generator alike."""
    name, msg = str(name), f"--device {name}:"
    if name == "auto":
        name = "mps" if torch.backends.mps.is_available() else "cpu"
        name = "cuda" if torch.cuda.is_available() else name
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{msg} unknown device (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{msg} this machine has no MPS (Apple GPU) backend")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{msg} this machine has no CUDA GPU (or torch was built without CUDA)")
        if local_rank is not None and device.index not in (None, local_rank):
            raise UserError(f"{msg} under torchrun each process uses cuda:LOCAL_RANK; use cuda")
        index = (device.index or 0) if local_rank is None else local_rank
        if index >= (count := torch.cuda.device_count()):
            raise UserError(f"{msg} cuda:{index} does not exist ({count} GPU(s))")
        device = torch.device("cuda", index)
    return device


def start_or_resume(args):
    """Refuse to overwrite a run. With --resume, the arguments come from the checkpoint except
    --out and the resumable ones typed on the command line (args.typed, from parse_args)."""
    resumable = "data steps device compile log_every sample_every ckpt_every".split()
    typed, path = set(vars(args).pop("typed", ())) - {"out", "resume"}, f"{args.out}/ckpt.pt"
    if os.path.exists(path) and not args.resume:
        raise UserError(f"{path} exists: pass --resume to continue it or choose another --out")
    if args.init and args.resume:
        raise UserError("--init starts a new run and --resume continues one: choose one")
    if not args.resume:
        return (args, None) if args.init is None else init_from(args, typed)
    ckpt, flag = load_checkpoint(path), lambda k: "--" + k.replace("_", "-")
    saved, can = ckpt["args"], ", ".join(map(flag, resumable))
    for k in sorted(typed - set(resumable)):
        if k not in saved:  # a flag newer than the run (which has its default)
            raise UserError(
                f"{flag(k)}: {path} is from before that flag; on --resume only {can} can change"
            )
        if getattr(args, k) != saved[k]:
            was = f"differs from the run's {saved[k]}; on --resume only {can} can change"
            raise UserError(f"{flag(k)} {getattr(args, k)} {was}")
    kept = {k: v for k, v in saved.items() if k not in typed | {"out", "resume"}}
    given = ", ".join(f"{k}={getattr(args, k)}" for k in sorted(typed)) or "nothing"
    kept_text = ", ".join(f"{k}={v}" for k, v in kept.items())
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"resume: from the command line: {given}; from the checkpoint: {kept_text}")
    return argparse.Namespace(**(vars(args) | kept)), ckpt


def class_sizes(classes):  # a class count, or {attribute: count} for several attributes
    return {k: len(v) for k, v in classes.items()} if isinstance(classes, dict) else len(classes)


def init_from(args, typed):
    """--init FILE: the networks' sizes from FILE (one typed otherwise is refused) and their
    weights, which Run.track loads; steps, optimizers and data start anew."""
    weights = read_weights(args.init)
    for k, v in weights["args"].items():
        if k in typed and getattr(args, k) != v:
            flag = "--" + k.replace("_", "-")
            raise UserError(f"{flag} {getattr(args, k)} differs from {args.init}'s {v}: drop it")
        setattr(args, k, v)
    return args, dict(weights, init=args.init)


def read_torch(path, device="cpu", allow=()):
    """torch.load with weights_only=True: tensors, plain containers and the torch classes in
    `allow` (rebuilt from their saved state); nothing in the file runs. A missing or unreadable
    file, or a global that weights_only refuses, is one line that says which."""
    device = check_device(device)  # an absent GPU is said as such, not as an unreadable file
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}")
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        refused = re.search(r"GLOBAL (\S+)", str(e))  # weights_only names what it refused
        if refused:
            why = f"refused global {refused[1]}; nothing in the file was run"
            raise UserError(f"{path}: {why}") from None
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__})") from None


def load_checkpoint(path, device="cpu"):
    ckpt = read_torch(path, device)
    found = ckpt.get("model") if isinstance(ckpt, dict) else None
    if found != MODEL:
        raise UserError(f"{path} is not a {MODEL} checkpoint (model: {found})")
    return ckpt


def leave(status):
    """sys.exit(status); under torchrun os._exit, once everything is written. torch 2.13's DDP
    keeps the gloo process group's worker threads alive after destroy_process_group; one that
    releases the last collective's tensors while Python shuts down needs the interpreter, which
    ends the thread, and the C++ runtime aborts the process (SIGABRT, 'terminate called without
    an active exception') after a run that finished. os._exit skips that shutdown."""
    if int(os.environ.get("WORLD_SIZE", 1)) == 1:
        sys.exit(status)
    if isinstance(status, str):
        print(status, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if isinstance(status, str) else status or 0)


def any_rank(flag, device):  # all ranks call it together; one process: no tensor, no GPU sync
    if not dist.is_initialized():
        return bool(flag)
    t = torch.tensor(float(bool(flag)), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sample_due(step, args):
    """A grid every --sample-every steps and at the end; before the first of those, also at steps
    10, 20, 40, 80, ..., so that a new run shows a picture within seconds."""
    early = step < args.sample_every and step % 10 == 0 and (k := step // 10) & (k - 1) == 0
    return step % args.sample_every == 0 or step == args.steps or early


def log_line(rec):
    """step 1200/50000 | kimg 76.8 | loss_D 1.213 | ... | 512 img/s | 1.9 GB | eta 2h41m"""
    h, m = divmod(int(rec["eta_s"]) // 60, 60)
    skip = ("step", "steps", "kimg", "img_s", "mem_gb", "eta_s", "time")
    parts = [f"step {rec['step']}/{rec['steps']}", f"kimg {rec['kimg']:.1f}"]
    parts += [f"{k} {v:.4g}" for k, v in rec.items() if k not in skip]
    parts += [f"{rec['img_s']:.0f} img/s"]
    parts += [f"{rec['mem_gb']:.2f} GB"] if "mem_gb" in rec else []
    return " | ".join(parts + [f"eta {h}h{m:02d}m" if h or m else f"eta {int(rec['eta_s'])}s"])


# --- command line: the shared flags, the same in every model file, then this model's own --------


def positive(kind, off=False):  # an argparse type: an int or a finite float above 0 (or 0: off)
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = -1
        if not (0 <= value if off else 0 < value) or value == math.inf:
            what = ("0 (off) or " if off else "") + ("an integer" if kind is int else "a number")
            raise argparse.ArgumentTypeError(f"must be {what} above 0, got {text!r}")
        return value

    return parse


class Help(argparse.ArgumentDefaultsHelpFormatter):  # each default once; none for None or off
    def _get_help_string(self, action):
        said = action.default is None or action.default is False or "default" in action.help
        return action.help if said else super()._get_help_string(action)


def shared_flags(
    about, steps, batch, lr_g, lr_d, ema_kimg, truncation, truncation_type=None, ema_rampup=0.05
):
    """The flags every model file has, with this model's defaults (its recommended 64x64 run)."""
    p = argparse.ArgumentParser(description=about, formatter_class=Help)
    add, pos_int, pos = p.add_argument, positive(int), positive(float)
    add("--data", default="toy", help="image folder (subfolders = classes), .zip, or toy")
    add("--res", type=int, default=64, help="image resolution (a power of two)")
    add(
        "--out",
        help=f"run folder: ckpt.pt, log.jsonl, samples/ (default out/{MODEL}-DATA, DATA the name"
        " of --data's folder or zip; --resume finds the run the same way)",
    )
    add("--steps", type=pos_int, default=steps, help="training steps (G updates)")
    add("--batch", type=pos_int, default=batch, help="global batch, split over processes")
    add("--lr-g", type=pos, default=lr_g, help="G learning rate")
    add("--lr-d", type=pos, default=lr_d, help="D learning rate")
    off = positive(float, off=True)
    add("--ema-kimg", type=off, default=ema_kimg, help="G_ema half-life in kimg (0: no EMA)")
    add(
        "--ema-rampup",
        type=off,
        default=ema_rampup,
        help="G_ema half-life at most this fraction of the images seen (0: no ramp-up)",
    )
    add("--seed", type=int, default=0, help="seed of weights, noise, data order and samples")
    add("--device", default="auto", help="auto (cuda, else mps, else cpu), or e.g. cuda:1")
    add(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="autocast dtype; auto: bf16 where the GPU or CPU has native bf16 kernels, else fp32",
    )
    add("--compile", action="store_true", help="torch.compile G and D forward passes")
    add("--resume", action="store_true", help="continue the run in --out")
    add(
        "--init",
        metavar="FILE",
        help="a new run from these weights: a ckpt.pt or a reference implementation's file (README:"
        " Start from a trained model); sizes from FILE, step 0, new optimizers",
    )
    add("--log-every", type=pos_int, default=50, help="steps between log lines")
    add("--sample-every", type=pos_int, default=200, help="steps between sample grids")
    add("--ckpt-every", type=pos_int, default=1000, help="steps between checkpoints")
    add("--flip", action=argparse.BooleanOptionalAction, default=True, help="random x-flips")
    add("--sample", metavar="CKPT", help="sampling mode: a grid from this checkpoint's G_ema")
    add("--n", type=pos_int, default=64, help="sampling: number of images")
    add("--truncation", type=truncation_type or pos, help=f"sampling: {truncation}")
    add("--interp", action="store_true", help="sampling: a latent-interpolation GIF")
    return p


def parse_args(parser, argv=None):
    """A bad value exits with one line. args.typed: the arguments typed, for --resume."""
    parser.error = lambda message: sys.exit(f"{MODEL}: error: {message} (see --help)")
    args = parser.parse_args(argv)
    unset = object()  # argparse keeps a namespace's attribute unless it was typed
    seen = parser.parse_args(argv, argparse.Namespace(**{k: unset for k in vars(args)}))
    args.typed = sorted(k for k, v in vars(seen).items() if v is not unset)
    name = os.path.splitext(os.path.basename(os.path.abspath(args.data)))[0]
    args.out = args.out or f"out/{MODEL}-{name}"  # one folder per model and data, e.g. -toy
    return args


def get_args(argv=None):
    p = shared_flags(
        "StyleGAN2-ADA (Karras et al. 2020) for anime faces. Unset knobs take the official 'auto'"
        " config for one GPU at --res and --batch: lr 0.0025 (0.002 at 1024 px), --ema-kimg"
        " batch * 10 / 32, --r1-gamma 0.0002 * res^2 / batch, --cbase 16384 (32768 from 512 px).",
        steps=60000,
        batch=32,
        lr_g=None,
        lr_d=None,
        ema_kimg=None,
        truncation="psi in W, w = w_avg + psi (w - w_avg), e.g. 0.7 (StyleGAN's trick)",
        truncation_type=float,  # psi 0 is the average face, negative psi its opposite
    )
    add = p.add_argument
    add(
        "--truncation-cutoff",
        type=positive(int),
        help="sampling: truncate only the first N styles (default all)",
    )
    add("--mixing", action="store_true", help="sampling: a style-mixing grid, sqrt(n) per side")
    add(
        "--class",
        dest="class_name",
        metavar="SPEC",
        help="sampling: only this class (name or index), or attribute values, e.g."
        " hair=blonde,eyes=blue (the others drawn from their training frequencies)",
    )
    add(
        "--labels",
        metavar="FILE.csv",
        help="attribute labels: a CSV with a file column (paths relative to --data) and attribute"
        " columns; default: subfolders",
    )
    add(
        "--label-columns",
        metavar="A,B",
        help="the --labels columns to condition on, comma-separated, e.g. hair,eyes (default all)",
    )
    add("--z-dim", type=positive(int), help="latent z size (default: --w-dim)")
    add("--w-dim", type=positive(int), default=512, help="intermediate latent w size")
    add(
        "--map-layers",
        type=positive(int),
        default=2,
        help="G's mapping network depth (official 'auto': 2; the paper: 8; D's is always 8)",
    )
    add(
        "--cbase",
        type=positive(int),
        help="channels at resolution r: min(cbase / r, cmax) (default 16384, 32768 from 512 px)",
    )
    add("--cmax", type=positive(int), default=512, help="maximum channels per layer")
    add(
        "--mbstd-group",
        type=positive(int),
        default=4,
        help="minibatch standard deviation group size",
    )
    add("--r1-gamma", type=float, help="R1 weight gamma (default 0.0002 * res^2 / batch)")
    add("--pl-weight", type=float, default=2.0, help="path length regularisation weight")
    add("--style-mixing", type=float, default=0.9, help="style mixing regularisation probability")
    add(
        "--aug",
        default="ada",
        choices=["ada", "fixed", "none"],
        help="augmentation probability p: adaptive, fixed at --p, or no augmentation",
    )
    add("--p", type=float, default=0.0, help="augmentation probability with --aug fixed")
    add("--ada-target", type=float, default=0.6, help="ADA target for r_t = E[sign(D(x_real))]")
    add(
        "--ada-kimg",
        type=positive(float),
        default=500,
        help="ADA speed: thousands of images for p to go 0 -> 1",
    )
    add(
        "--freeze-d",
        type=positive(int, off=True),
        default=0,
        metavar="N",
        help="FreezeD (Mo et al. 2020), for fine-tuning with --init: D's first N layers are not"
        " trained (fromrgb, then conv0, conv1, skip of each block from the highest resolution; the"
        " official --freezed)",
    )
    return parse_args(p, argv)


if __name__ == "__main__":
    args = get_args()
    try:
        sample(args) if args.sample else train(args)
    except UserError as e:
        leave(f"{MODEL}: error: {e}")
    except OSError as e:  # e.g. a sample grid on a full disk
        leave(f"{MODEL}: error: could not write {e.filename}: {e.strerror}")
    except SystemExit as e:  # stopped by Ctrl-C or SIGTERM, after saving: 130 or 143
        leave(e.code)
    leave(0)
