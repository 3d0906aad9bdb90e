"""SAGAN: "Self-Attention Generative Adversarial Networks", Han Zhang, Ian Goodfellow, Dimitris
Metaxas, Augustus Odena, 2018. arXiv:1805.08318. Spectral normalisation from "Spectral
Normalization for Generative Adversarial Networks", Takeru Miyato, Toshiki Kataoka, Masanori
Koyama, Yuichi Yoshida, 2018. arXiv:1802.05957.

Paper -> code
- self-attention block: 1x1 convs f (key), g (query), h (value) to C/8 channels, a softmax over
  all positions, a 1x1 conv v back to C, output gamma * o + x with a learned gamma that starts
  at 0 (sec. 3, eqs. 1-3)                                            -> SelfAttention
- attention in both G and D, on the larger feature maps (sec. 5.2 found feat32/feat64 best):
  the 32x32 maps for 64x64 images                                    -> Generator, Discriminator
- spectral normalisation on every layer of G as well as D, one power iteration per training
  forward, u and v kept as buffers (sec. 4.1; Miyato et al., Alg. 1) -> SpectralNorm, SNConv2d,
                                                                        SNConvTranspose2d
- hinge loss (sec. 3, eq. 4)                                         -> loss_d, loss_g
- D and G updated in turn, each on a z ~ p_z of its own (eq. 4)      -> train
- TTUR: lr 1e-4 for G, 4e-4 for D, one D step per G step (sec. 4.2); Adam betas (0, 0.9)
  (sec. 5)                                                           -> train

Not from the paper: what changes results
- A DCGAN-shaped G and D (as dcgan.py, widths 64) with spectral norm instead of the paper's
  ResNet blocks; BatchNorm stays in G (the paper's is class-conditional; this model is
  unconditional). D's LeakyReLU slope is 0.1 (Miyato et al.'s CNN); weights start at N(0, 0.02).
- G upsamples with stride-2 transposed convs: nearest upsampling + 3x3 conv lost diversity on
  anime faces; `--upsample nearest` keeps that alternative.
- z ~ N(0, 0.5^2 I) truncated to [-1, 1], for training and for samples (it trained better on
  anime faces than N(0, I)).
- The block follows the paper, not the official release (whose h has C/2 channels and whose
  keys and values are 2x2 max-pooled).
- D scores real and fake images in one forward, so both see the same sigma (each training
  forward moves u).
- G's step draws a fresh z, as the official code does (brain-research/self-attention-gan: z is
  a random op, utils_ori.py:46, drawn again by the G step's session run,
  train_imagenet.py:132-136) and heykeetae/Self-Attention-GAN (trainer.py:154).
- Samples come from G_ema, a moving average of G's weights (half-life --ema-kimg, ramped up over
  the first 20x as many images, as StyleGAN2-ADA does).
Not from the paper: engineering
- Attention runs in F.scaled_dot_product_attention(scale=1) (eq. 1 has no 1/sqrt(d)): on a GPU
  a flash / memory-efficient kernel, so the (B, N, N) attention matrix is never stored.
- The power iteration runs in fp32 under autocast (a bf16 sigma is off by ~1%); checkpoints
  that hold u and v under their older names (`...sn.u`, `...sn.v`) still load (SpectralNorm).
- Each block's gamma is logged (gamma_G, gamma_D), to show that attention is being used.
- bf16 autocast on GPUs, DDP, atomic checkpoints, resume: the plumbing block, as in every file.
Another project's network: heykeetae/Self-Attention-GAN (`--arch heykeetae`)
- Its trainer.py's `{step}_G.pth` / `{step}_D.pth` (plain state dicts, trainer.py:186-189) are
  read: sampled, `--init` fine-tunes from them, and `--arch heykeetae` trains that network from
  scratch with this file's loop (hinge loss, TTUR, one D forward on real and fake, EMA)
                                                                     -> read_heykeetae, networks
- Its network (sagan_models.py:42-153), 64x64 only, its widths generalised (g_ch, d_ch for its
  conv_dim 64; it hard-codes the attention widths, lines 88-89, 141-142): G = transposed convs
  z -> 8ch at 4x4, then 4ch, 2ch, ch, each with a bias, BatchNorm and ReLU, attention after
  16x16 (2ch) and 32x32 (ch), a last transposed conv to RGB and tanh; D = 4x4 stride-2 convs
  with biases and LeakyReLU 0.1, 3 -> ch -> 2ch -> 4ch, attention at 8x8 (4ch), -> 8ch,
  attention at 4x4 (8ch), a 4x4 conv to the logit. Spectral norm on every layer but the last
  ones and the attention convs; torch's default initialisation (it sets none)
                                                    -> HeykeetaeGenerator, HeykeetaeDiscriminator
- Its attention block (sagan_models.py:8-40): query and key to C/8 channels, the value to C (so
  no output conv), with biases, no spectral norm, gamma of shape (1,) -> HeykeetaeSelfAttention
- Its spectral norm (spectral.py:23-35, 66-68) takes a transposed conv's weight (in, out, kh,
  kw) with the input channels as rows, and iterates on every forward, sampling included. Here
  training forwards do the same; an eval forward does that iteration from the stored u without
  storing it, so every eval forward equals their first forward after loading, and one z gives
  one image                                    -> HeykeetaeSNConv2d, HeykeetaeSNConvTranspose2d
- z ~ N(0, I), untruncated, as their trainer.py draws it (torch.randn, lines 111, 154), for
  training and samples (--truncation T: N(0, I) truncated to [-T, T])          -> sample_z
- Their names, mapped to ours: a spectral-norm wrapper's module.weight_bar, weight_u, weight_v
  and module.bias -> weight, u, v, bias; attention's query_conv -> query (key, value alike); a
  DataParallel `module.` prefix (their --parallel) dropped. A D file alone gives z_dim 128 (their
  parameter.py:15 default) and g_ch = d_ch                               -> HEYKEETAE_NAMES

Usage
    python sagan.py                                   # built-in toy faces, 64x64
    python sagan.py --data ./faces                    # any folder or .zip of images
    python sagan.py --res 32 --steps 200 --batch 32 --g-ch 16 --d-ch 16   # CPU smoke run
    python sagan.py --data ./faces --resume --steps 60000   # continue out/sagan-faces
    torchrun --nproc_per_node=4 sagan.py --data ./faces
    python sagan.py --sample out/sagan-faces/ckpt.pt --n 64 [--interp]
    python sagan.py --sample models/sagan_1/100000_G.pth    # heykeetae's G (its D read beside)
    python sagan.py --data ./faces --init models/sagan_1/100000_G.pth   # fine-tune G and D
    python sagan.py --data ./faces --arch heykeetae         # their network, this file's loop
"""

import argparse
import contextlib
import copy
import io
import json
import math
import os
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

MODEL = "sagan"
Z_STD, Z_BOUND = 0.5, 1.0  # z ~ N(0, Z_STD^2 I) truncated to [-Z_BOUND, Z_BOUND]


# --- model --------------------------------------------------------------------------------------


def check_res(res, attn_res=None, arch="sagan", upsample="convtranspose"):
    if arch == "heykeetae":  # their G and D have four layers of fixed sizes
        if res != 64:
            raise UserError(f"--arch heykeetae builds 64x64 images only; got --res {res}")
        if attn_res is not None or upsample != "convtranspose":
            raise UserError("--attn-res and --upsample do not apply to --arch heykeetae")
        return
    if res < 32 or res & (res - 1):
        raise UserError(f"{MODEL} builds power-of-two resolutions from 32 up; got --res {res}")
    sizes = [2**k for k in range(2, int(math.log2(res)))]
    if attn_res is not None and attn_res not in sizes:
        raise UserError(f"--attn-res {attn_res}: not a hidden feature-map size, one of {sizes}")


class SpectralNorm:
    """Mixin for a layer with .weight: use W / sigma(W), sigma the largest singular value
    estimated by power iteration (Miyato et al. 2018, Alg. 1). The matrix has the output channels
    as rows: (out, in*kh*kw), for Conv2d and ConvTranspose2d alike (as torch's spectral_norm).
    One iteration per training forward: W changes little per step, so u and v, kept as buffers
    (in the checkpoint), stay close to the top singular vectors."""

    row_dim = 0  # the weight's dimension that gives the matrix's rows (ConvTranspose2d: 1, out)
    iterate_in_eval = False  # an eval forward uses u and v as stored (heykeetae's layers: True)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)  # the layer's own __init__, next in the MRO
        rows = self.weight.shape[self.row_dim]
        self.register_buffer("u", F.normalize(torch.randn(rows), dim=0))
        self.register_buffer("v", F.normalize(torch.randn(self.weight.numel() // rows), dim=0))

    def sn_weight(self):  # W / sigma(W), in fp32 and in the weight's own shape
        W = self.weight.transpose(0, self.row_dim)  # (out, in, kh, kw) unless row_dim says else
        with torch.autocast(W.device.type, enabled=False):  # a bf16 sigma would be off by ~1%
            M = W.flatten(1).float()  # (out, in*kh*kw)
            u, v = self.u, self.v
            if self.training or self.iterate_in_eval:
                with torch.no_grad():  # Alg. 1: v <- W^T u / |W^T u|, u <- W v / |W v|
                    # v as u^T W, a matrix product (mm, not mv): torch.compile's backward then
                    # keeps v, instead of computing it again from u after this forward stored
                    # the new u (a wrong gradient where W has few rows: G's RGB layer)
                    v = F.normalize((u[None] @ M)[0], dim=0)
                    u = F.normalize(torch.mv(M, v), dim=0)
                if self.training:  # kept for the next step; an eval forward leaves them as stored
                    self.v.copy_(v)
                    self.u.copy_(u)
            # sigma(W) = u^T W v, u and v constants: the gradient reaches W through sigma too.
            # Copies: u and v may be the buffers (eval), which a training forward before this
            # graph's backward would rewrite in place
            sigma = torch.dot(u.clone(), torch.mv(M, v.clone()))
            return (M / sigma).view_as(W).transpose(0, self.row_dim)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # older checkpoints hold u and v in a submodule `sn` (`...sn.u`): load them as `...u`
        for name in ("u", "v"):
            if prefix + "sn." + name in state_dict:
                state_dict[prefix + name] = state_dict.pop(prefix + "sn." + name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class SNConv2d(SpectralNorm, nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(x, self.sn_weight(), self.bias)


class SNConvTranspose2d(SpectralNorm, nn.ConvTranspose2d):
    row_dim = 1  # the weight is (in, out, kh, kw)

    def forward(self, x):
        W = self.sn_weight()  # (in, out, kh, kw)
        return F.conv_transpose2d(x, W, self.bias, self.stride, self.padding, self.output_padding)


class SelfAttention(nn.Module):
    """Self-attention over the N = H * W positions of a feature map (sec. 3). Query g, key f and
    value h are 1x1 convs to C/8 channels; o = v(softmax(q k^T) h) goes back to C; the block
    returns gamma * o + x with gamma starting at 0, so the network first relies on local
    convolutions and learns to use distant positions later (sec. 3, after eq. 3)."""

    def __init__(self, c):
        super().__init__()
        c_bar = max(c // 8, 1)
        self.query = SNConv2d(c, c_bar, 1, bias=False)  # g
        self.key = SNConv2d(c, c_bar, 1, bias=False)  # f
        self.value = SNConv2d(c, c_bar, 1, bias=False)  # h
        self.out = SNConv2d(c_bar, c, 1, bias=False)  # v
        self.gamma = nn.Parameter(torch.zeros(()))

    def qkv(self, x):  # (B, C, H, W) -> 3 x (B, 1, N, C/8): one head, positions as the sequence
        convs = (self.query, self.key, self.value)
        return [m(x).flatten(2).transpose(1, 2)[:, None] for m in convs]

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(x)
        o = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # (B, 1, N, C/8), eqs. 1-2
        o = self.out(o[:, 0].transpose(1, 2).reshape(B, -1, H, W))  # (B, C/8, H, W) -> (B, C, H, W)
        return x + self.gamma * o  # eq. 3


def upsample_conv(c_in, c_out, mode):
    """x2 upsampling: a stride-2 transposed conv (the default), or nearest + 3x3 conv."""
    if mode == "nearest":
        up = nn.Upsample(scale_factor=2, mode="nearest")
        return nn.Sequential(up, SNConv2d(c_in, c_out, 3, 1, 1, bias=False))
    return SNConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)


class Generator(nn.Module):
    """z (B, z_dim) -> image (B, 3, res, res). Channels halve as the resolution doubles;
    self-attention after the attn_res x attn_res block (default res / 2: 32x32 for 64x64)."""

    arch = "sagan"  # its z: sample_z

    def __init__(self, res=64, z_dim=128, ch=64, attn_res=None, upsample="convtranspose"):
        super().__init__()
        self.res, self.z_dim = res, z_dim
        attn_res = attn_res or res // 2
        n_up = int(math.log2(res)) - 2  # 4x4 -> res
        c, r = min(ch * 2 ** (n_up - 1), ch * 16), 4
        first = SNConvTranspose2d(z_dim, c, 4, 1, 0, bias=False)  # (B, z_dim, 1, 1) -> (B, c, 4, 4)
        layers = [first, nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        for _ in range(n_up - 1):  # (B, c, r, r) -> (B, c/2, 2r, 2r)
            layers += [SelfAttention(c)] if r == attn_res else []
            up = upsample_conv(c, c // 2, upsample)
            layers += [up, nn.BatchNorm2d(c // 2), nn.ReLU(inplace=True)]
            c, r = c // 2, r * 2
        layers += [SelfAttention(c)] if r == attn_res else []
        layers += [upsample_conv(c, 3, upsample), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z):  # (B, z_dim, 1, 1) -> (B, c, 4, 4) -> ... -> (B, 3, res, res)
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    """image (B, 3, res, res) -> logit (B,). Self-attention after the attn_res x attn_res layer
    (default res / 2). No BatchNorm: spectral norm alone constrains D."""

    def __init__(self, res=64, ch=64, attn_res=None):
        super().__init__()
        attn_res = attn_res or res // 2
        n_down = int(math.log2(res)) - 2  # res -> 4x4
        layers = [SNConv2d(3, ch, 4, 2, 1), nn.LeakyReLU(0.1, inplace=True)]
        c, r = ch, res // 2
        for _ in range(n_down - 1):  # (B, c, r, r) -> (B, 2c, r/2, r/2), at most 16 * ch
            layers += [SelfAttention(c)] if r == attn_res else []
            c2 = min(c * 2, ch * 16)
            layers += [SNConv2d(c, c2, 4, 2, 1), nn.LeakyReLU(0.1, inplace=True)]
            c, r = c2, r // 2
        layers += [SelfAttention(c)] if r == attn_res else []
        layers += [SNConv2d(c, 1, 4, 1, 0)]  # (B, c, 4, 4) -> (B, 1, 1, 1)
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).flatten()


def init_weights(m):
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def attention_gamma(model):
    """The first self-attention block's gamma (eq. 3), logged to show attention in use."""
    return next(m for m in model.modules() if isinstance(m, SelfAttention)).gamma.reshape(())


# --- the second architecture: heykeetae/Self-Attention-GAN's network (--arch heykeetae) ---------


class HeykeetaeSNConv2d(SNConv2d):
    """Their spectral norm (spectral.py): one power iteration on every forward. In eval mode it
    starts from the stored u and its result is not kept, so every eval forward gives their first
    forward after loading (theirs moves u even while sampling), and one z one image."""

    iterate_in_eval = True


class HeykeetaeSNConvTranspose2d(SNConvTranspose2d):
    row_dim = 0  # their wrapper takes rows from the weight's first dimension: the input channels
    iterate_in_eval = True


class HeykeetaeSelfAttention(SelfAttention):
    """Their attention block: query f and key g to C/8 channels, the value h straight to C, so
    there is no output conv; biases, no spectral norm; gamma of shape (1,) starting at 0."""

    def __init__(self, c):
        nn.Module.__init__(self)  # its own layers, not SelfAttention's
        self.query = nn.Conv2d(c, max(c // 8, 1), 1)
        self.key = nn.Conv2d(c, max(c // 8, 1), 1)
        self.value = nn.Conv2d(c, c, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(x)  # (B, 1, N, C/8) twice, (B, 1, N, C)
        o = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # (B, 1, N, C), eqs. 1-2
        # eq. 3 without the output conv v: the value already has C channels
        return x + self.gamma * o[:, 0].transpose(1, 2).reshape(B, C, H, W)


class HeykeetaeGenerator(nn.Module):
    """Their G (sagan_models.py), 64x64 only: z (B, z_dim) -> image (B, 3, 64, 64). Layers named
    as in their files (l1-l4, attn1, attn2, last), so a file loads after HEYKEETAE_NAMES."""

    arch, res = "heykeetae", 64  # its z: sample_z

    def __init__(self, z_dim=128, ch=64):
        super().__init__()
        self.z_dim = z_dim

        def up(c_in, c_out, *stride):  # spectral-normalised transposed conv, BatchNorm, ReLU
            conv = HeykeetaeSNConvTranspose2d(c_in, c_out, 4, *stride)
            return nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))

        self.l1 = up(z_dim, 8 * ch)  # (B, z_dim, 1, 1) -> (B, 8ch, 4, 4)
        self.l2 = up(8 * ch, 4 * ch, 2, 1)  # -> (B, 4ch, 8, 8)
        self.l3 = up(4 * ch, 2 * ch, 2, 1)  # -> (B, 2ch, 16, 16)
        self.attn1 = HeykeetaeSelfAttention(2 * ch)
        self.l4 = up(2 * ch, ch, 2, 1)  # -> (B, ch, 32, 32)
        self.attn2 = HeykeetaeSelfAttention(ch)
        self.last = nn.Sequential(nn.ConvTranspose2d(ch, 3, 4, 2, 1), nn.Tanh())  # (B, 3, 64, 64)

    def forward(self, z):
        x = self.attn1(self.l3(self.l2(self.l1(z[:, :, None, None]))))  # (B, 2ch, 16, 16)
        return self.last(self.attn2(self.l4(x)))


class HeykeetaeDiscriminator(nn.Module):
    """Their D (sagan_models.py), 64x64 only: image (B, 3, 64, 64) -> logit (B,)."""

    def __init__(self, ch=64):
        super().__init__()

        def down(c_in, c_out):  # spectral-normalised 4x4 stride-2 conv, LeakyReLU 0.1
            conv = HeykeetaeSNConv2d(c_in, c_out, 4, 2, 1)
            return nn.Sequential(conv, nn.LeakyReLU(0.1, inplace=True))

        self.l1 = down(3, ch)  # (B, 3, 64, 64) -> (B, ch, 32, 32)
        self.l2 = down(ch, 2 * ch)  # -> (B, 2ch, 16, 16)
        self.l3 = down(2 * ch, 4 * ch)  # -> (B, 4ch, 8, 8)
        self.attn1 = HeykeetaeSelfAttention(4 * ch)
        self.l4 = down(4 * ch, 8 * ch)  # -> (B, 8ch, 4, 4)
        self.attn2 = HeykeetaeSelfAttention(8 * ch)
        # (B, 8ch, 4, 4) -> (B, 1, 1, 1): a one-layer Sequential, as in their files (last.0)
        self.last = nn.Sequential(nn.Conv2d(8 * ch, 1, 4))

    def forward(self, x):
        x = self.attn1(self.l3(self.l2(self.l1(x))))  # (B, 4ch, 8, 8)
        return self.last(self.attn2(self.l4(x))).flatten()


def networks(a, device="cpu"):
    """(G, D) for a's --arch and sizes (ARCH; args or read_weights' "args"), initialised, on
    device: this file's network (weights N(0, 0.02)) or heykeetae's (torch's defaults as theirs)."""
    if a["arch"] == "heykeetae":
        G, D = HeykeetaeGenerator(a["z_dim"], a["g_ch"]), HeykeetaeDiscriminator(a["d_ch"])
        return G.to(device), D.to(device)
    G = Generator(a["res"], a["z_dim"], a["g_ch"], a["attn_res"], a["upsample"]).to(device)
    D = Discriminator(a["res"], a["d_ch"], a["attn_res"]).to(device)
    G.apply(init_weights)
    D.apply(init_weights)
    return G, D


# --- losses -------------------------------------------------------------------------------------


def loss_d(logits_real, logits_fake):
    """hinge loss (Lim & Ye 2017), as in SNGAN/SAGAN: D gets no gradient from samples it already
    classifies beyond the margin, which keeps it from overfitting easy examples (sec. 3, eq. 4)."""
    return F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean()


def loss_g(logits_fake):
    """G raises D's score of its samples, without a margin (sec. 3, eq. 4)."""
    return -logits_fake.mean()


# --- training -----------------------------------------------------------------------------------


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


def train(args):
    check_res(args.res, args.attn_res, args.arch, args.upsample)
    run = Run(args)  # device, precision, DDP, seed, --resume: the plumbing block below
    args, device = run.args, run.device
    data = load_images(args.data, args.res, verbose=run.rank == 0)
    batches = Batches(
        data, args.batch // run.world, device, args.seed, run.rank, run.world, args.flip
    )
    G, D = networks(vars(args), device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    # TTUR (sec. 4.2): D's larger learning rate stands in for several D steps per G step;
    # Adam beta1 = 0, beta2 = 0.9 (sec. 5)
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr_g, betas=(0.0, 0.9))
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=(0.0, 0.9))
    run.track(G=G, D=D, G_ema=G_ema, opt_G=opt_G, opt_D=opt_D, loader=batches)  # --resume loads
    scaler_G, scaler_D = run.scaler_G, run.scaler_D  # fp16 loss scaling (no-ops in bf16, fp32)
    G_train, D_train = run.wrap(G, D)  # DDP under torchrun, torch.compile with --compile
    z_fixed = sample_z(64, args.z_dim, torch.Generator().manual_seed(args.seed), arch=args.arch)
    z_fixed = z_fixed.to(device)

    for step in run.steps(grid=lambda: G_ema(z_fixed), about=f"{len(data.labels)} images"):
        x_real, _ = next(batches)  # (B, 3, res, res) in [-1, 1]
        x_real = x_real.contiguous(memory_format=run.layout)
        B = x_real.shape[0]

        # (1) update D: minimise E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]  (sec. 3, eq. 4);
        # real and fake in one forward, scored with the same spectral norms.
        # z is drawn on the device from its global RNG (a CUDA kernel there, no host-to-device copy)
        z = sample_z(B, args.z_dim, None, device=device, arch=args.arch)
        with run.autocast:
            with torch.no_grad():  # loss_D needs no gradient through G
                x_fake = G_train(z)
            logits = D_train(torch.cat([x_real, x_fake])).float()  # (2B,)
            logits_real, logits_fake = logits.chunk(2)
            loss_D = loss_d(logits_real, logits_fake)
        opt_D.zero_grad(set_to_none=True)
        scaler_D.scale(loss_D).backward()
        scaler_D.step(opt_D)
        scaler_D.update()

        # (2) update G: minimise -E[D(G(z))]  (sec. 3, eq. 4), on a fresh z
        z = sample_z(B, args.z_dim, None, device=device, arch=args.arch)
        with run.autocast:
            loss_G = loss_g(D_train(G_train(z)).float())
        opt_G.zero_grad(set_to_none=True)
        scaler_G.scale(loss_G).backward()
        scaler_G.step(opt_G)
        scaler_G.update()

        update_ema(G_ema, G, ema_beta(args.batch, ema_half_life(step, args)))
        # gamma_G, gamma_D: averaged over the log interval like the losses
        run.log(
            loss_D=loss_D,
            loss_G=loss_G,
            d_real=logits_real.mean(),
            d_fake=logits_fake.mean(),
            gamma_G=attention_gamma(G),
            gamma_D=attention_gamma(D),
        )
    return G_ema


# --- sampling -----------------------------------------------------------------------------------


def sample_z(n, z_dim, gen, truncation=None, device="cpu", arch="sagan"):
    """z ~ N(0, Z_STD^2 I) truncated to [-Z_BOUND, Z_BOUND], in training and for samples; with
    truncation T the bound is T instead. Drawn by inverse CDF, so no redraw loop syncs the GPU.
    --arch heykeetae: z ~ N(0, I) as their trainer.py draws it, truncated only to a given T.
    gen: a torch.Generator on `device`, or None for the device's global RNG (training)."""
    if arch == "heykeetae" and truncation is None:
        return torch.randn(n, z_dim, generator=gen, device=device)
    std = Z_STD if arch == "sagan" else 1.0
    bound = Z_BOUND if truncation is None else truncation
    z = torch.empty(n, z_dim, device=device)
    return nn.init.trunc_normal_(z, 0.0, std, -bound, bound, generator=gen)


# the arguments that shape G and D (a checkpoint without "arch" is from before it: "sagan")
ARCH = ("res", "z_dim", "g_ch", "d_ch", "attn_res", "upsample", "arch")


def read_weights(path, device="cpu"):
    """A checkpoint of this file, or a heykeetae/Self-Attention-GAN trainer.py file ({step}_G.pth
    or {step}_D.pth, its pair read from the same folder), as {"args": the sizes (ARCH), "G", "D",
    "G_ema"}: what load_generator and --init read. Torch files only, weights_only=True."""
    found = read_torch(path, device)
    if isinstance(found, dict) and "model" in found:
        ckpt = load_checkpoint(path, device)
        a = dict(arch="sagan") | ckpt["args"]  # no "arch": from before --arch, this network
        return dict(ckpt, args={k: a[k] for k in ARCH})
    if is_heykeetae(found):
        return read_heykeetae(path, found, device)
    raise UserError(f"{path} is not a {MODEL} checkpoint nor a heykeetae/Self-Attention-GAN file")


# their names -> ours: a spectral-norm wrapper (spectral.py) holds the layer as `module` and its
# weight as weight_bar, with u and v beside it; the attention convs end in _conv
HEYKEETAE_NAMES = {
    ".module.weight_bar": ".weight",
    ".module.weight_u": ".u",
    ".module.weight_v": ".v",
    ".module.bias": ".bias",
    "_conv.": ".",
}


def is_heykeetae(sd):  # their files are recognised by the spectral-norm wrapper's names
    return isinstance(sd, dict) and any(str(k).endswith(".module.weight_bar") for k in sd)


def read_heykeetae(path, sd, device):
    """heykeetae/Self-Attention-GAN's trainer.py files, {step}_G.pth and {step}_D.pth (plain state
    dicts; the other of the pair is read from the same folder when it is there), renamed to our
    Heykeetae* modules' names. Sizes from the shapes: z_dim from G's first layer, g_ch from its
    last, d_ch from D's first (a D alone: z_dim 128, their default, and g_ch = d_ch). No G_ema."""
    pair = re.sub(r"_([GD])\.pth$", lambda m: f"_{'DG'[m[1] == 'D']}.pth", path)
    files = [(path, sd)] + [(pair, None)] * (pair != path and os.path.isfile(pair))
    nets, a = {}, dict(res=64, attn_res=None, upsample="convtranspose", arch="heykeetae")
    for p, sd in files:
        sd = read_torch(p, device) if sd is None else sd
        if not is_heykeetae(sd):
            raise UserError(f"{p}, beside {path}, is not a heykeetae/Self-Attention-GAN file")
        sd = {heykeetae_name(str(k)): v for k, v in sd.items()}
        name = "G" if "l1.1.running_mean" in sd else "D"  # G: a BatchNorm after each layer
        first, last = sd.get("l1.0.weight"), sd.get("last.0.weight")
        if name in nets or first is None or last is None or first.ndim != 4 or last.ndim != 4:
            what = f"a second {name}" if name in nets else f"a {name} without l1 and last layers"
            raise UserError(f"{p} holds {what}; --arch heykeetae reads their G and D")
        res, rgb = 64 if "l4.0.weight" in sd else 32, (last if name == "G" else first).shape[1]
        if res != 64 or rgb != 3:
            raise UserError(f"{p}: its {name} is for {rgb}-channel {res}px images; 64px RGB only")
        if name == "G":  # transposed convs: (in, out, kh, kw)
            a.update(z_dim=first.shape[0], g_ch=last.shape[0])
        else:
            a.update(d_ch=first.shape[0])
        nets[name] = sd
    a = dict(dict(z_dim=128, g_ch=a.get("d_ch"), d_ch=a.get("g_ch")), **a)
    built = dict(zip("GD", networks(a)))
    for name, sd in nets.items():
        try:
            built[name].load_state_dict(sd)
        except RuntimeError as e:  # the first line that says which layer differs
            why = next((t.strip() for t in str(e).splitlines()[1:] if t.strip()), str(e))
            raise UserError(
                f"{path}: its {name} is not a network {MODEL}.py builds ({why})"
            ) from None
    return dict(args={k: a[k] for k in ARCH}, G=nets.get("G"), D=nets.get("D"), G_ema=None)


def heykeetae_name(key):  # e.g. l1.0.module.weight_bar -> l1.0.weight (HEYKEETAE_NAMES)
    key = key.removeprefix("module.")  # saved from nn.DataParallel (their --parallel)
    for theirs, ours in HEYKEETAE_NAMES.items():
        key = key.replace(theirs, ours)
    return key


def load_generator(path, device="cpu"):
    """Checkpoint -> G_ema (G where the file has no G_ema) in eval mode, with .res, .z_dim and
    .arch for generate()."""
    ckpt = read_weights(path, device)
    if ckpt["G_ema"] is None and ckpt["G"] is None:
        raise UserError(f"{path} holds no generator")
    G = networks(ckpt["args"], device)[0]
    G.load_state_dict(ckpt["G_ema"] if ckpt["G_ema"] is not None else ckpt["G"])
    return G.eval().requires_grad_(False)


@torch.no_grad()
def generate(G, n, seed=0, truncation=None, y=None):
    """n images in [-1, 1], (n, 3, res, res) float32 on the CPU; the same seed, the same images.
    truncation: the bound on |z| (default Z_BOUND; --arch heykeetae: none). y is ignored."""
    z = sample_z(n, G.z_dim, torch.Generator().manual_seed(seed), truncation, arch=G.arch)
    device = next(G.parameters()).device
    return torch.cat([G(z[i : i + 256].to(device)).float().cpu() for i in range(0, n, 256)])


@torch.no_grad()
def interpolation_frames(G, n, seed=0, truncation=None, y=None, keys=4, steps=16):
    """Frames of n images, each moving on a great circle through `keys` latents and back."""
    gen, device = torch.Generator().manual_seed(seed), next(G.parameters()).device
    zs, frames = [sample_z(n, G.z_dim, gen, truncation, arch=G.arch) for _ in range(keys)], []
    for a, b in zip(zs, zs[1:] + zs[:1]):
        cos = (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1, keepdim=True)
        omega = torch.arccos(cos.clamp(-1, 1)).clamp_min(1e-6)  # (n, 1): the angle a to b
        for t in torch.linspace(0, 1, steps + 1)[:-1]:
            z = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
            frames.append(make_grid(G(z.to(device)).float().cpu()))
    return frames


def sample(args):
    G = load_generator(args.sample, setup_device(args.device)[0])
    tag = f"seed{args.seed}" + (f"_trunc{args.truncation:g}" if args.truncation is not None else "")
    folder = os.path.dirname(args.sample)
    if args.interp:
        frames = interpolation_frames(G, args.n, args.seed, args.truncation)
        path = save_gif(frames, os.path.join(folder, f"interp_{tag}.gif"))
    else:
        images = generate(G, args.n, args.seed, args.truncation)
        path = save_grid(images, os.path.join(folder, f"samples_{tag}.png"))
    print(path)


# bf16 on a CPU: channels_last measured faster for this model's G and D step, 64x64 (fp32 NCHW = 1x:
# 1.49x vs 0.46x; README, CPU table). fp32 stays NCHW on a CPU: the same numbers as before
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
        "SAGAN (Zhang et al. 2018) for anime faces.",
        steps=30000,
        batch=64,
        lr_g=1e-4,
        lr_d=4e-4,
        ema_kimg=10.0,
        truncation="bound z to [-T, T] instead of the training range [-1, 1] (a bound on z)",
    )
    add = p.add_argument
    add("--z-dim", type=positive(int), default=128, help="latent size (Miyato et al.'s CNNs: 128)")
    add("--g-ch", type=positive(int), default=64, help="G width: its last hidden layer")
    add("--d-ch", type=positive(int), default=64, help="D width: its first layer")
    add(
        "--attn-res",
        type=int,
        default=None,
        help="feature-map size of the self-attention block in G and D (default res/2: 32 at 64x64)",
    )
    add(
        "--upsample",
        default="convtranspose",
        choices=["convtranspose", "nearest"],
        help="G's x2 upsampling: stride-2 transposed conv, or nearest + 3x3 conv",
    )
    add(
        "--arch",
        default="sagan",
        choices=["sagan", "heykeetae"],
        help="the networks: this file's, or heykeetae/Self-Attention-GAN's (64x64 only; two"
        " attention blocks with a C-channel value and biases, no spectral norm on them nor on the"
        " last layers), whose {step}_G.pth / _D.pth --sample and --init also read",
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
