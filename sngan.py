"""SNGAN: "Spectral Normalization for Generative Adversarial Networks", Takeru Miyato, Toshiki
Kataoka, Masanori Koyama, Yuichi Yoshida, 2018. arXiv:1802.05957. The ResNet version.

Paper -> code
- spectral normalisation: every D weight is divided by its largest singular value sigma(W),
  so that W / sigma(W) has spectral norm 1 (sec. 2.1)                   -> SpectralNorm,
                                                                           SNConv2d, SNLinear
- sigma(W) from one power iteration per training forward, u kept between steps (sec. 2.2,
  Alg. 1); the gradient flows through sigma too (sec. 2.3)              -> SpectralNorm.sn_weight
- a learned scale: W_bar = gamma * W / sigma(W) (Appendix E). A layer is then gamma-Lipschitz,
  not 1-Lipschitz: gamma gives up the paper's bound for a freer D       -> SpectralNorm
- ResNet G (BatchNorm, ReLU, nearest upsampling, 3x3 convs) and D (ReLU, no normalisation
  layers, global sum pooling, linear output) (Appendix B)               -> GBlock, DBlock
- Glorot-uniform initialisation (Appendix B)                            -> glorot
- the hinge loss (sec. 4, after Lim & Ye 2017)                          -> loss_d, loss_g
- Adam with beta1 0, beta2 0.9, as in the paper's ResNet runs (App. B)  -> train

Not from the paper: what changes results
- gamma starts at sigma(W) of the initial weight (exact, not power iteration), so D's first
  logits have the scale of its Glorot weights (SpectralNorm.init_gamma); the paper does not say
  where gamma starts. The authors' Chainer code starts it there with use_gamma (an SVD:
  pfnet-research/sngan_projection, source/links/sn_convolution_2d.py:87-93, sn_linear.py:72-77).
  The SNGAN-AnimeFace recipe means to (tqch/SNGAN-AnimeFace, spectral_norm/snconv.py:77-81,
  sngan.py:28-34) but reaches only D's last layer (--arch tqch, below).
- Glorot gain sqrt(2) inside residual branches, 1 elsewhere, as in the authors' Chainer code.
- n_dis = 1 (the paper's ResNet runs: 5 D steps per G step) with TTUR (Heusel et al. 2017): D's
  lr 4e-4 is 4x G's 1e-4 to keep D ahead, the trade SAGAN made. G's step draws a fresh z of the
  batch size, as the authors' code (pfnet-research/sngan_projection, updater.py:80-86) and the
  recipe (tqch/SNGAN-AnimeFace, train.py:231-236) do.
- D downsamples with stride-2 convs (4x4 in the residual branch, 2x2 on the shortcut) instead of
  conv then average pooling; G's last layer (before tanh) is a 1x1 conv to RGB.
- z ~ N(0, I) of size 128 (the paper's). Widths: G halves its channels at each doubling from
  8 * g_ch at 4x4 to g_ch at the output, D doubles from d_ch to 8 * d_ch; --g-ch/--d-ch 64.
- Samples come from G_ema, a moving average of G's weights (half-life --ema-kimg, ramped up over
  the first 20x as many images, as StyleGAN2-ADA does).
Not from the paper: engineering
- sigma is always computed in fp32, also under bf16 autocast (SpectralNorm.sn_weight).
- Sampling GIFs: --walk (a random walk in z), --interp (slerp through fixed latents),
  --truncation-sweep (a GIF, T from 2 to 0.1 and back: the truncation trick of BigGAN, Brock
  et al. 2018, sec. 3.1)                                                -> truncation_frames
- bf16 autocast on GPUs, DDP, atomic checkpoints, resume: the plumbing block, as in every file.
Another project's network: tqch/SNGAN-AnimeFace (`--arch tqch`)
- Its train.py's anime-sngan.pt (a dict of netD, netG, optD, optG, scalerD, scalerG, ema, epoch;
  train.py:316-328) and a netG state dict alone are read: sampled, `--init` fine-tunes from them,
  and `--arch tqch` trains that network from scratch with this file's loop (hinge loss, TTUR,
  EMA). --num-blocks is their --num-blocks, G's reversed (train.py:93-95) -> read_tqch, networks
- Its network, 64x64 only (sngan.py:12-103, spectral_norm/snresnet.py:8-44): G = a linear layer
  without bias to 16ch at 4x4, four stages of bilinear x2 upsampling (align_corners) and residual
  blocks BN-ReLU-conv3x3-BN-ReLU-conv3x3 without biases (a 1x1 conv on the shortcut where the
  width changes), 16ch -> 8ch -> 4ch -> 2ch -> ch, then BN-ReLU, a 1x1 conv to RGB and tanh.
  D = residual blocks ReLU-conv3x3-ReLU-conv3x3 with biases, halving with a stride-2 first conv
  and a 2x2 avg-pool + 1x1 conv shortcut: 3 -> ch at 32x32, then ch -> 2ch -> ... -> 16ch at
  2x2; ReLU, the mean over positions, a linear layer without bias (their hinge-loss runs drop
  it, train.py:131). Their in-place ReLU (snresnet.py:14, 27-29) also rectifies each D block's
  shortcut input but the first's (sngan.py:37). He-normal weights (sngan.py:28-34, 83-87;
  snconv.py:75), D's biases 0. D's gammas start at 1, the last layer's at sigma(W): their
  re-initialisation (sngan.py:29-34) looks for spectral_norm.SNConv2d, but snresnet.py:2 builds
  the blocks from snconv.SNConv2d, the same file imported as another module
                     -> TqchGenerator, TqchDiscriminator, TqchGBlock, TqchDBlock, he_init
- Its spectral norm (spectral_norm/snconv.py:30-43, 86-94; snlinear.py:13-25, 60-67) has this
  file's gamma, started at sigma(W) by an SVD (snconv.py:77-81), and moves u in training mode
  only, as ours; but it runs Alg. 1 in its order: v from the stored u, then u, and sigma =
  u^T W v = |W v|, while ours takes v once more from the new u. Both estimate sigma(W); for the
  same (W, u) they differ until u has converged                  -> SpectralNorm.v_first,
                                                                   TqchSNConv2d, TqchSNLinear
- Modules named as in their files, so their state dicts load as they are (gamma (1,) read as
  ()). G_ema: netG with their EMA's shadow (utils.py:102-152, --use-ema: the parameters; the
  BatchNorm statistics are netG's). A netD with an output bias (their --loss vanilla) is not
  read: --init starts D anew                                              -> read_tqch

Usage
    python sngan.py                                   # built-in toy faces, 64x64
    python sngan.py --data ./faces                    # any folder or .zip of images
    python sngan.py --res 32 --steps 200 --batch 32 --g-ch 16 --d-ch 16   # CPU smoke run
    python sngan.py --data ./faces --resume --steps 60000   # continue out/sngan-faces
    torchrun --nproc_per_node=4 sngan.py --data ./faces
    python sngan.py --sample out/sngan-faces/ckpt.pt --n 64 [--walk | --interp]
    python sngan.py --sample out/sngan-faces/ckpt.pt --n 36 --truncation-sweep   # T 2 to 0.1
    python sngan.py --sample chkpts/anime-sngan.pt           # tqch/SNGAN-AnimeFace's G (G_ema)
    python sngan.py --data ./faces --init chkpts/anime-sngan.pt   # fine-tune their G and D
    python sngan.py --data ./faces --arch tqch --num-blocks 2,2,2,2   # their network, our loop
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

MODEL = "sngan"
NUM_BLOCKS = (1, 1, 1, 1)  # --arch tqch: residual blocks per D stage (their train.py's default)


# --- model --------------------------------------------------------------------------------------


def check_res(res, arch="sngan", num_blocks=NUM_BLOCKS):
    if arch == "tqch":  # their G and D have four stages: 4x4 -> 64x64 and 64x64 -> 2x2
        if res != 64:
            raise UserError(f"--arch tqch builds 64x64 images only; got --res {res}")
        return
    if tuple(num_blocks) != NUM_BLOCKS:
        raise UserError("--num-blocks applies to --arch tqch only")
    if res < 32 or res & (res - 1):
        raise UserError(f"{MODEL} builds power-of-two resolutions from 32 up; got --res {res}")


class SpectralNorm:
    """Mixin for a layer with .weight: use gamma * W / sigma(W) (sec. 2.1, Appendix E), sigma from
    one power iteration per training forward (sec. 2.2, Alg. 1). A conv weight (out, in, kh, kw)
    is the matrix (out, in*kh*kw), as in the paper. u, a random unit vector, is a buffer and gamma
    a parameter: both are in the checkpoint, so --resume and DDP keep them as trained."""

    v_first = False  # tqch's layers: sigma from the v that gave the new u (TqchSNConv2d)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)  # the layer's own __init__, next in the MRO
        self.gamma = nn.Parameter(torch.ones(()))
        self.register_buffer("u", F.normalize(torch.randn(self.weight.shape[0]), dim=0))
        self.init_gamma()

    def sn_weight(self):
        """gamma * W / sigma(W), one step of Alg. 1 per training forward from the stored u, the new
        u kept; sigma = u^T W v with that u and a v recomputed from it, so an eval forward, which
        only reads u, gives the sigma of the training forward that stored it. v_first (tqch's
        layers): sigma = u^T W v = |W v| with the v that gave the new u, in eval mode too, where
        u is not kept. u and v are constants for autograd: d sigma / dW is then u v^T (sec. 2.3),
        and W's gradient gains the term that makes W / sigma scale-free."""
        W = self.weight.reshape(self.weight.shape[0], -1)  # (out, in*kh*kw)
        with torch.autocast(W.device.type, enabled=False):  # bf16 keeps 8 bits: sigma in fp32
            with torch.no_grad():
                if self.v_first:  # Alg. 1 in its order: v from the stored u, then u from v
                    # v as u^T W, a matrix product (mm, not mv): torch.compile's backward then
                    # keeps v instead of computing it again from u, which this forward and the
                    # next (D on real, then on fake) overwrite: a wrong gradient, or an error
                    v = F.normalize((self.u[None] @ W)[0], dim=0)
                    u = F.normalize(W @ v, dim=0)
                    if self.training:
                        self.u.copy_(u)
                else:
                    if self.training:  # Alg. 1: v <- W^T u/|.|, u <- W v/|.|
                        self.u.copy_(F.normalize(W @ F.normalize(W.t() @ self.u, dim=0), dim=0))
                    v = F.normalize(W.t() @ self.u, dim=0)
                    u = self.u
            # sigma(W) = u^T W v. u is cloned: a second training forward before backward (D on
            # real, then on fake) and DDP's buffer broadcast overwrite u in place, which would
            # break this graph
            sigma = torch.dot(u.clone(), W @ v)
            return self.weight * (self.gamma / sigma)

    @torch.no_grad()
    def init_gamma(self):
        """gamma <- sigma(W) of the weight as initialised, exactly (not by power iteration):
        W_bar = gamma W / sigma then starts at W's own scale rather than at spectral norm 1, and
        D's first logits with it."""
        W = self.weight.reshape(self.weight.shape[0], -1).double()  # (out, in*kh*kw)
        gram = W @ W.t() if W.shape[0] <= W.shape[1] else W.t() @ W
        # sigma(W)^2 is the largest eigenvalue of W W^T: the SVD's s[0] in fp64, 10x faster on a CPU
        self.gamma.copy_(torch.linalg.eigvalsh(gram)[-1].sqrt())


class SNConv2d(SpectralNorm, nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(x, self.sn_weight(), self.bias)


class SNLinear(SpectralNorm, nn.Linear):
    def forward(self, x):
        return F.linear(x, self.sn_weight(), self.bias)


def glorot(layer, gain=1.0):
    """Glorot-uniform weights, zero bias (Appendix B); gain sqrt(2) inside residual branches, 1
    elsewhere. An SN layer's gamma follows its new weight."""
    nn.init.xavier_uniform_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    if isinstance(layer, SpectralNorm):
        layer.init_gamma()
    return layer


class GBlock(nn.Module):
    """x -> BN-ReLU-up2-conv3x3-BN-ReLU-conv3x3, plus up2-conv1x1(x): doubles the resolution."""

    def __init__(self, cin, cout):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), glorot(nn.Conv2d(cin, cout, 3, 1, 1), 2**0.5)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), glorot(nn.Conv2d(cout, cout, 3, 1, 1), 2**0.5)
        self.skip = glorot(nn.Conv2d(cin, cout, 1))

    def forward(self, x):  # (B, cin, s, s) -> (B, cout, 2s, 2s)
        h = self.conv1(F.interpolate(F.relu(self.bn1(x)), scale_factor=2))
        h = self.conv2(F.relu(self.bn2(h)))
        return h + self.skip(F.interpolate(x, scale_factor=2))


class DBlock(nn.Module):
    """x -> ReLU-conv3x3-ReLU-conv4x4/2, plus conv2x2/2(x): halves the resolution (down=True).
    The first block skips the leading ReLU (the image is not a ReLU output; the paper's
    "optimized block"). The 4x4 kernel is a multiple of the stride, so every input pixel is
    seen equally often; the 2x2/2 shortcut is a learned generalisation of avg-pool + 1x1 conv."""

    def __init__(self, cin, cout, down=True, first=False):
        super().__init__()
        self.first = first
        self.conv1 = glorot(SNConv2d(cin, cout, 3, 1, 1), 2**0.5)
        if down:
            self.conv2 = glorot(SNConv2d(cout, cout, 4, 2, 1), 2**0.5)
            self.skip = glorot(SNConv2d(cin, cout, 2, 2, 0))
        else:
            self.conv2 = glorot(SNConv2d(cout, cout, 3, 1, 1), 2**0.5)
            self.skip = glorot(SNConv2d(cin, cout, 1)) if cin != cout else nn.Identity()

    def forward(self, x):  # (B, cin, s, s) -> (B, cout, s/2, s/2), or (B, cout, s, s)
        h = self.conv1(x if self.first else F.relu(x))
        return self.conv2(F.relu(h)) + self.skip(x)


class Generator(nn.Module):
    """z (B, z_dim) -> image (B, 3, res, res): linear to 4x4, one GBlock per doubling, BN-ReLU,
    a 1x1 conv to RGB and tanh. Channels: 8*ch at 4x4, halving per doubling, never below ch."""

    def __init__(self, res=64, z_dim=128, ch=64):
        super().__init__()
        self.res, self.z_dim = res, z_dim
        n_up = int(math.log2(res)) - 2  # 4x4 -> res
        chs = [ch * min(2 ** (n_up - i), 8) for i in range(n_up + 1)]  # 64x64: 512 512 256 128 64
        self.c0 = chs[0]
        self.linear = glorot(nn.Linear(z_dim, 4 * 4 * chs[0]))
        self.blocks = nn.Sequential(*[GBlock(a, b) for a, b in zip(chs, chs[1:])])
        to_rgb = glorot(nn.Conv2d(chs[-1], 3, 1))
        self.out = nn.Sequential(nn.BatchNorm2d(chs[-1]), nn.ReLU(), to_rgb, nn.Tanh())

    def forward(self, z):
        # (B, z_dim) -> (B, 8ch, 4, 4) -> ... (B, ch, res, res) -> (B, 3, res, res)
        return self.out(self.blocks(self.linear(z).view(-1, self.c0, 4, 4)))


class Discriminator(nn.Module):
    """image (B, 3, res, res) -> logit (B,): DBlocks down to 4x4, one more DBlock at 4x4, ReLU,
    a sum over positions and a linear layer, every weight spectrally normalised.
    Channels: ch at res/2, doubling per halving up to 8*ch."""

    def __init__(self, res=64, ch=64):
        super().__init__()
        n_down = int(math.log2(res)) - 2  # res -> 4x4
        chs = [ch * min(2**i, 8) for i in range(n_down)]  # 64x64, ch 64: 64 128 256 512
        blocks = [DBlock(3, chs[0], first=True)] + [DBlock(a, b) for a, b in zip(chs, chs[1:])]
        self.blocks = nn.Sequential(*blocks, DBlock(chs[-1], chs[-1], down=False))
        self.linear = glorot(SNLinear(chs[-1], 1))

    def forward(self, x):  # (B, 3, res, res) -> (B, 8ch, 4, 4) -> (B, 8ch) -> (B,)
        h = F.relu(self.blocks(x)).sum((2, 3))  # global sum pooling
        return self.linear(h).flatten()

    def gammas(self):  # (n_layers,): the learned scales of Appendix E, logged
        return torch.stack([m.gamma for m in self.modules() if isinstance(m, SpectralNorm)])


# --- the second architecture: tqch/SNGAN-AnimeFace's network (--arch tqch) ----------------------


class TqchSNConv2d(SNConv2d):
    v_first = True  # their order of Alg. 1 (SpectralNorm.sn_weight)


class TqchSNLinear(SNLinear):
    v_first = True


def he_init(layer):
    """He-normal weights, N(0, 2 / fan_in): tqch's initialisation of every G and D layer."""
    nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")


class TqchGBlock(nn.Module):
    """Their G block: x -> BN-ReLU-conv3x3-BN-ReLU-conv3x3 (no biases) + x, through a 1x1 conv
    where the width changes. It keeps the resolution: the upsampling comes before it."""

    def __init__(self, cin, cout):
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.norm2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        # a one-layer Sequential, as in their files (skip.0)
        same = cin == cout
        self.skip = nn.Identity() if same else nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False))

    def forward(self, x):  # (B, cin, s, s) -> (B, cout, s, s)
        h = self.conv1(F.relu(self.norm1(x)))
        return self.conv2(F.relu(self.norm2(h))) + self.skip(x)


class TqchDBlock(nn.Module):
    """Their D block: x -> ReLU-conv3x3-ReLU-conv3x3 (biases, spectral norm) + a shortcut, 2x2
    average pooling and a 1x1 conv (down=True: the first conv has stride 2), or x itself. Their
    ReLU works in place on x, so the shortcut also sees ReLU(x); the first block (first=True) takes
    the image as it is."""

    def __init__(self, cin, cout, down=False, first=False):
        super().__init__()
        self.first = first
        self.conv1 = TqchSNConv2d(cin, cout, 3, 1 + down, 1)
        self.conv2 = TqchSNConv2d(cout, cout, 3, 1, 1)
        pool = [nn.AvgPool2d(2)] if down else []
        same = cin == cout and not down
        self.skip = nn.Identity() if same else nn.Sequential(*pool, TqchSNConv2d(cin, cout, 1))

    def forward(self, x):  # (B, cin, s, s) -> (B, cout, s/2, s/2) (down), or (B, cout, s, s)
        x = x if self.first else F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + self.skip(x)


class TqchGenerator(nn.Module):
    """Their G, 64x64: z (B, z_dim) -> a linear layer (no bias) to 16ch at 4x4; four stages, each
    a bilinear x2 upsampling (align_corners) and num_blocks[i] TqchGBlocks, 16ch -> 8ch -> 4ch ->
    2ch -> ch; BN-ReLU, a 1x1 conv to RGB, tanh. Modules named as in their files."""

    res = 64

    def __init__(self, z_dim=128, ch=64, num_blocks=NUM_BLOCKS):
        super().__init__()
        self.z_dim, self.c0 = z_dim, 16 * ch

        def stage(cin, cout, n):  # (B, cin, s, s) -> (B, cout, 2s, 2s)
            up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            more = [TqchGBlock(cout, cout) for _ in range(n - 1)]
            return nn.Sequential(up, TqchGBlock(cin, cout), *more)

        # a one-layer Sequential, as in their files (in_fc.0)
        self.in_fc = nn.Sequential(nn.Linear(z_dim, 16 * ch * 4 * 4, bias=False))
        self.layer1 = stage(16 * ch, 8 * ch, num_blocks[0])  # -> (B, 8ch, 8, 8)
        self.layer2 = stage(8 * ch, 4 * ch, num_blocks[1])  # -> (B, 4ch, 16, 16)
        self.layer3 = stage(4 * ch, 2 * ch, num_blocks[2])  # -> (B, 2ch, 32, 32)
        self.layer4 = stage(2 * ch, ch, num_blocks[3])  # -> (B, ch, 64, 64)
        self.out_conv = nn.Sequential(nn.BatchNorm2d(ch), nn.ReLU(), nn.Conv2d(ch, 3, 1), nn.Tanh())
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):  # their out_conv keeps torch's bias init
                he_init(m)

    def forward(self, z):  # (B, z_dim) -> (B, 16ch, 4, 4) -> ... (B, ch, 64, 64) -> (B, 3, 64, 64)
        h = self.in_fc(z).view(-1, self.c0, 4, 4)
        return self.out_conv(self.layer4(self.layer3(self.layer2(self.layer1(h)))))


class TqchDiscriminator(nn.Module):
    """Their D, 64x64: image (B, 3, 64, 64) -> logit (B,): a first TqchDBlock to ch at 32x32, four
    stages of num_blocks[i] blocks (the first halving), ch -> 2ch -> 4ch -> 8ch -> 16ch at 2x2;
    ReLU, the mean over positions and a linear layer without bias (their hinge-loss runs)."""

    def __init__(self, ch=64, num_blocks=NUM_BLOCKS):
        super().__init__()

        def stage(cin, cout, n):  # (B, cin, s, s) -> (B, cout, s/2, s/2)
            more = [TqchDBlock(cout, cout) for _ in range(n - 1)]
            return nn.Sequential(TqchDBlock(cin, cout, down=True), *more)

        self.in_block = TqchDBlock(3, ch, down=True, first=True)  # -> (B, ch, 32, 32)
        self.layer1 = stage(ch, 2 * ch, num_blocks[0])  # -> (B, 2ch, 16, 16)
        self.layer2 = stage(2 * ch, 4 * ch, num_blocks[1])  # -> (B, 4ch, 8, 8)
        self.layer3 = stage(4 * ch, 8 * ch, num_blocks[2])  # -> (B, 8ch, 4, 4)
        self.layer4 = stage(8 * ch, 16 * ch, num_blocks[3])  # -> (B, 16ch, 2, 2)
        # ReLU, mean pooling, (B, 16ch) -> (B, 1): indices as in their files (out_fc.3)
        linear = TqchSNLinear(16 * ch, 1, bias=False)
        self.out_fc = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear)
        for m in self.modules():
            if isinstance(m, SpectralNorm):  # biases 0 and gamma 1, as their layers start
                he_init(m)
                nn.init.ones_(m.gamma)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        linear.init_gamma()  # gamma = sigma(W): their re-initialisation reaches this one only

    def forward(self, x):  # (B, 3, 64, 64) -> (B, 16ch, 2, 2) -> (B,)
        h = self.layer4(self.layer3(self.layer2(self.layer1(self.in_block(x)))))
        return self.out_fc(h).flatten()

    gammas = Discriminator.gammas  # (n_layers,): the learned scales, logged


def networks(a, device="cpu"):
    """(G, D) for a's --arch and sizes (ARCH: args or read_weights' "args"), initialised, on
    device: this file's network, or tqch's (its G has D's blocks per stage reversed, as their
    train.py builds it)."""
    if a["arch"] == "tqch":
        G = TqchGenerator(a["z_dim"], a["g_ch"], a["num_blocks"][::-1])
        D = TqchDiscriminator(a["d_ch"], a["num_blocks"])
    else:
        G, D = Generator(a["res"], a["z_dim"], a["g_ch"]), Discriminator(a["res"], a["d_ch"])
    return G.to(device), D.to(device)


# --- losses -------------------------------------------------------------------------------------


def loss_d(logits_real, logits_fake):
    """Hinge loss (Lim & Ye 2017), as in SNGAN (sec. 4): D gets no gradient from samples it
    already classifies beyond the margin of 1, which keeps it from overfitting easy examples."""
    return F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean()


def loss_g(logits_fake):
    """G minimises -D(G(z)) (sec. 4): the hinge is D's alone."""
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
    check_res(args.res, args.arch, args.num_blocks)
    run = Run(args)  # device, precision, DDP, seed, --resume: the plumbing block below
    args, device = run.args, run.device
    data = load_images(args.data, args.res, verbose=run.rank == 0)
    batches = Batches(
        data, args.batch // run.world, device, args.seed, run.rank, run.world, args.flip
    )
    G, D = networks(vars(args), device)  # --arch: this file's networks or tqch's
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    # Appendix B: the ResNet runs use Adam with beta1 0 and beta2 0.9
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr_g, betas=(0.0, 0.9))
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=(0.0, 0.9))
    run.track(G=G, D=D, G_ema=G_ema, opt_G=opt_G, opt_D=opt_D, loader=batches)  # --resume loads
    scaler_G, scaler_D = run.scaler_G, run.scaler_D  # fp16 loss scaling (no-ops in bf16, fp32)
    G_train, D_train = run.wrap(G, D)  # DDP under torchrun, torch.compile with --compile
    z_fixed = sample_z(64, args.z_dim, torch.Generator().manual_seed(args.seed)).to(device)

    for step in run.steps(grid=lambda: G_ema(z_fixed), about=f"{len(data.labels)} images"):
        x_real, _ = next(batches)  # (B, 3, res, res) in [-1, 1]
        x_real = x_real.contiguous(memory_format=run.layout)
        z = torch.randn(x_real.shape[0], args.z_dim, device=device)

        # (1) update D: minimise E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))] (sec. 4, hinge loss);
        # every D forward in training mode also takes one power-iteration step (sec. 2.2, Alg. 1)
        with run.autocast:
            with torch.no_grad():  # D's step needs no graph through G
                x_fake = G_train(z)
            logits_real, logits_fake = D_train(x_real), D_train(x_fake)
            loss_D = loss_d(logits_real.float(), logits_fake.float())
        opt_D.zero_grad(set_to_none=True)
        scaler_D.scale(loss_D).backward()
        scaler_D.step(opt_D)
        scaler_D.update()

        # (2) update G: minimise -E[D(G(z))] (sec. 4) on a fresh z of the same batch size
        z = torch.randn(x_real.shape[0], args.z_dim, device=device)
        with run.autocast:
            loss_G = loss_g(D_train(G_train(z)).float())
        opt_G.zero_grad(set_to_none=True)
        scaler_G.scale(loss_G).backward()
        scaler_G.step(opt_G)
        scaler_G.update()

        update_ema(G_ema, G, ema_beta(args.batch, ema_half_life(step, args)))
        # gamma: the mean learned scale of D's layers (Appendix E), averaged over the log interval
        run.log(
            loss_D=loss_D,
            loss_G=loss_G,
            d_real=logits_real.mean(),
            d_fake=logits_fake.mean(),
            gamma=D.gammas().mean(),
        )
    return G_ema


# --- sampling -----------------------------------------------------------------------------------


def sample_z(n, z_dim, gen, truncation=None):
    """z ~ N(0, I); with truncation T, entries beyond |T| are redrawn until none are left."""
    z = torch.randn(n, z_dim, generator=gen)
    while truncation is not None and (bad := z.abs() > truncation).any():
        z[bad] = torch.randn(int(bad.sum()), generator=gen)
    return z


# the arguments that shape G and D (a checkpoint without "arch" is from before it: "sngan")
ARCH = ("res", "z_dim", "g_ch", "d_ch", "arch", "num_blocks")


def read_weights(path, device="cpu"):
    """A checkpoint of this file, or a tqch/SNGAN-AnimeFace file (read_tqch), as {"args": the
    sizes (ARCH), "G", "D", "G_ema"}: what load_generator and --init read. Torch files only,
    weights_only=True (nothing in a file runs)."""
    found = read_torch(path, device)
    if isinstance(found, dict) and "model" in found:
        ckpt = load_checkpoint(path, device)
        a = dict(arch="sngan", num_blocks=NUM_BLOCKS) | ckpt["args"]  # older: before --arch
        return dict(ckpt, args={k: a[k] for k in ARCH})
    if isinstance(found, dict) and ("netG" in found or "in_fc.0.weight" in found):
        return read_tqch(path, found)
    raise UserError(f"{path} is not a {MODEL} checkpoint nor a tqch/SNGAN-AnimeFace file")


def read_tqch(path, found):
    """tqch/SNGAN-AnimeFace's train.py checkpoint (anime-sngan.pt: a dict of netD, netG, optD,
    optG, scalerD, scalerG, ema, epoch) or a netG state dict alone, for the Tqch* modules, which
    have their names; their gamma (1,) becomes (). Sizes from the shapes: z_dim and g_ch from G's
    first and last layers, d_ch from D's first (netG alone: g_ch, their one --base-ch), num_blocks
    from the blocks per stage (D's; G's are reversed). G_ema: netG with their EMA's shadow, which
    holds the parameters (their --use-ema; none: None). A D trained with their --loss vanilla
    has an output bias our D lacks: not read (D None, so --init starts D anew)."""
    G, D = (found["netG"], found.get("netD")) if "netG" in found else (found, None)
    ema = found.get("ema") if "netG" in found else None
    shadow = ema.get("shadow") if isinstance(ema, dict) else None

    def weight(sd, name, key, ndim):  # a layer's weight, which gives sizes
        W = sd.get(key) if isinstance(sd, dict) else None
        if getattr(W, "ndim", None) != ndim:
            raise UserError(f"{path}: its {name} is not a tqch/SNGAN-AnimeFace network (no {key})")
        return W

    def stages(sd):  # residual blocks per stage: layer1.* to layer4.*, each block with a conv1
        pattern = r"layer{}\.\d+\.conv1\.weight"
        return tuple(sum(bool(re.fullmatch(pattern.format(i), k)) for k in sd) for i in range(1, 5))

    fc, to_rgb = weight(G, "netG", "in_fc.0.weight", 2), weight(G, "netG", "out_conv.2.weight", 4)
    from_rgb = weight(D, "netD", "in_block.conv1.weight", 4) if D is not None else None
    z_dim, g_ch = fc.shape[1], to_rgb.shape[1]  # (16ch * 4 * 4, z_dim), (3, ch, 1, 1)
    d_ch = g_ch if from_rgb is None else from_rgb.shape[0]  # (ch, 3, 3, 3)
    for name, c in (("netG", to_rgb.shape[0]), ("netD", 3 if D is None else from_rgb.shape[1])):
        if c != 3:
            raise UserError(f"{path}: its {name} is for {c}-channel images; RGB only")
    num_blocks = stages(G)[::-1]  # their train.py builds G with D's blocks per stage reversed
    if D is not None and stages(D) != num_blocks:
        said = f"its netD has {stages(D)} blocks per stage and its netG {stages(G)}"
        raise UserError(f"{path}: {said}; their train.py builds G with D's reversed")
    if D is not None and "out_fc.3.bias" in D:  # their --loss vanilla: a BCE logit with a bias
        D = None
    if D is not None:  # their gamma has shape (1,), ours ()
        D = {
            k: v.reshape(()) if k.endswith("gamma") and v.numel() == 1 else v for k, v in D.items()
        }
    a = dict(res=64, z_dim=z_dim, g_ch=g_ch, d_ch=d_ch, arch="tqch", num_blocks=num_blocks)
    built = dict(zip(("netG", "netD"), networks(a)))
    params = {k for k, _ in built["netG"].named_parameters()}
    if shadow and (not isinstance(shadow, dict) or set(shadow) != params):  # theirs: no buffers
        raise UserError(f"{path}: its ema shadow does not hold netG's parameters")
    G_ema = dict(G) | shadow if shadow else None  # BatchNorm statistics: netG's
    for name, sd in (("netG", G), ("netD", D), ("ema", G_ema)):
        try:
            if sd is not None:
                built["netD" if name == "netD" else "netG"].load_state_dict(sd)
        except RuntimeError as e:  # the first line that says which layer differs
            why = next((t.strip() for t in str(e).splitlines()[1:] if t.strip()), str(e))
            raise UserError(
                f"{path}: its {name} is not a network {MODEL}.py builds ({why})"
            ) from None
    return dict(args={k: a[k] for k in ARCH}, G=G, D=D, G_ema=G_ema)


def load_generator(path, device="cpu"):
    """Checkpoint -> G_ema (G where the file has none: tqch's without their EMA) in eval mode,
    with .res and .z_dim for generate()."""
    ckpt = read_weights(path, device)
    G = networks(ckpt["args"], device)[0]
    G.load_state_dict(ckpt["G_ema"] if ckpt["G_ema"] is not None else ckpt["G"])
    return G.eval().requires_grad_(False)


@torch.no_grad()
def generate(G, n, seed=0, truncation=None, y=None):
    """n images in [-1, 1], (n, 3, res, res) float32 on the CPU; the same seed, the same images.
    truncation: a bound on |z| (entries beyond it are redrawn). y is ignored (unconditional)."""
    z = sample_z(n, G.z_dim, torch.Generator().manual_seed(seed), truncation)
    device = next(G.parameters()).device
    return torch.cat([G(z[i : i + 256].to(device)).float().cpu() for i in range(0, n, 256)])


@torch.no_grad()
def interpolation_frames(G, n, seed=0, truncation=None, y=None, keys=4, steps=16):
    """Frames of n images, each moving on a great circle through `keys` latents and back."""
    gen, device = torch.Generator().manual_seed(seed), next(G.parameters()).device
    zs, frames = [sample_z(n, G.z_dim, gen, truncation) for _ in range(keys)], []
    for a, b in zip(zs, zs[1:] + zs[:1]):
        cos = (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1, keepdim=True)
        omega = torch.arccos(cos.clamp(-1, 1)).clamp_min(1e-6)  # (n, 1): the angle a to b
        for t in torch.linspace(0, 1, steps + 1)[:-1]:
            z = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
            frames.append(make_grid(G(z.to(device)).float().cpu()))
    return frames


@torch.no_grad()
def walk_frames(G, n, seed=0, truncation=None, steps=64, step_size=0.15):
    """Frames of n images, each z on its own random walk z <- sqrt(1 - s^2) z + s * eps: every
    frame's z is still N(0, I), so the walk wanders through the prior without drifting off it."""
    gen, device = torch.Generator().manual_seed(seed), next(G.parameters()).device
    z, frames = sample_z(n, G.z_dim, gen, truncation), []
    for _ in range(steps):
        frames.append(make_grid(G(z.to(device)).float().cpu()))
        z = math.sqrt(1 - step_size**2) * z + step_size * sample_z(n, G.z_dim, gen, truncation)
    return frames


def truncation_frames(G, n, seed=0, y=None, t_max=2.0, t_min=0.1, steps=20):
    """The truncation trade-off (BigGAN's sec. 3.1, fig. 2a) as frames, T from t_max down to t_min
    and back. The same seed keeps every z entry inside |T|, so only the redrawn ones change."""
    ts = torch.linspace(t_max, t_min, steps).tolist()
    frames = [make_grid(generate(G, n, seed, t, y)) for t in ts]
    return frames + frames[-2:0:-1]


def sample(args):
    if args.walk + args.interp + args.truncation_sweep > 1:
        raise UserError("choose one of --walk, --interp, --truncation-sweep")
    G = load_generator(args.sample, setup_device(args.device)[0])
    tag = f"seed{args.seed}" + (f"_trunc{args.truncation:g}" if args.truncation is not None else "")
    folder, n, seed, t = os.path.dirname(args.sample), args.n, args.seed, args.truncation
    if args.walk:
        path = save_gif(walk_frames(G, n, seed, t), os.path.join(folder, f"walk_{tag}.gif"))
    elif args.interp:
        frames = interpolation_frames(G, n, seed, t)
        path = save_gif(frames, os.path.join(folder, f"interp_{tag}.gif"))
    elif args.truncation_sweep:
        frames = truncation_frames(G, n, seed)
        path = save_gif(frames, os.path.join(folder, f"truncation_{tag}.gif"))
    else:
        path = save_grid(generate(G, n, seed, t), os.path.join(folder, f"samples_{tag}.png"))
    print(path)


# bf16 on a CPU: channels_last measured faster for this model's G and D step, 64x64 (fp32 NCHW = 1x:
# 5.02x vs 4.25x; README, CPU table). fp32 stays NCHW on a CPU: the same numbers as before
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
        "SNGAN (Miyato et al. 2018), ResNet version, for anime faces.",
        steps=30000,
        batch=64,
        lr_g=1e-4,
        lr_d=4e-4,
        ema_kimg=10.0,
        truncation="redraw z entries beyond |T| (a bound on z)",
    )
    add = p.add_argument
    add("--walk", action="store_true", help="sampling: a GIF of a random walk in z")
    add("--truncation-sweep", action="store_true", help="sampling: a GIF, T from 2 to 0.1 and back")
    add("--z-dim", type=positive(int), default=128, help="latent size (the paper's 128)")
    add(
        "--g-ch",
        type=positive(int),
        default=64,
        help="G width: channels of the last block (8x at 4x4; --arch tqch 16x)",
    )
    add(
        "--d-ch",
        type=positive(int),
        default=64,
        help="D width: channels of the first block (8x at 4x4; --arch tqch 16x at 2x2)",
    )
    add(
        "--arch",
        default="sngan",
        choices=["sngan", "tqch"],
        help="the networks: this file's, or tqch/SNGAN-AnimeFace's (64x64 only: bilinear"
        " upsampling before G's blocks, 16x the width at 4x4, D down to 2x2 with avg-pool"
        " shortcuts), whose anime-sngan.pt and netG files --sample and --init also read",
    )
    add(
        "--num-blocks",
        type=block_counts,
        default=NUM_BLOCKS,
        help="--arch tqch: residual blocks in each of D's 4 stages, G's reversed (default 1,1,1,1,"
        " their train.py's)",
    )
    return parse_args(p, argv)


def block_counts(text):  # an argparse type: "2,2,2,2" -> (2, 2, 2, 2), four integers above 0
    counts = tuple(int(c) if c.strip().isdigit() else 0 for c in text.split(","))
    if len(counts) != 4 or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"must be 4 integers above 0, e.g. 2,2,2,2; got {text!r}")
    return counts


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
