"""BigGAN: "Large Scale GAN Training for High Fidelity Natural Image Synthesis", Andrew Brock,
Jeff Donahue, Karen Simonyan, 2018. arXiv:1809.11096.

Paper -> code
- the SA-GAN baseline (sec. 3): ResNet blocks, self-attention (SA-GAN eq. 1-3), spectral norm in
  G and D (Miyato et al. 2018, Alg. 1)     -> GBlock, DBlock, SelfAttention, SpectralNorm
- class-conditional BatchNorm in G, its gains and biases linear in [shared class embedding,
  z chunk]; hierarchical latent: one z chunk for the 4x4 input layer and one per block
  (sec. 3, "shared embedding", "hierarchical latent spaces"; appendix B)
                                             -> ConditionalBatchNorm2d, Generator, z_chunks
- projection D: D(x, y) = psi(phi(x)) + <embed(y), phi(x)> (Miyato & Koyama 2018; sec. 3)
                                             -> Discriminator
- several attributes per image (--labels: a CSV, e.g. hair and eye colour) in place of the
  paper's one class: G's shared embedding is the sum of one embedding per attribute (a linear
  layer of a sum of independent tables is one of their concatenation), and D's projection is one
  inner product per attribute, summed: sum_i <embed_i(y_i), phi(x)>. One table holds every
  attribute's rows, offset per attribute; one attribute is the paper's model unchanged
                                             -> Generator.conditions, Discriminator, attributes
- hinge loss (sec. 3)                        -> loss_d, loss_g
- orthogonal regularisation, off-diagonal form, beta 1e-4 (sec. 3.1, eq. 3)  -> ortho_penalty
- truncation trick: z entries beyond |T| are redrawn (sec. 3.1, fig. 2a)
                                             -> sample_z, truncation_frames
- orthogonal init; Adam, lr G 5e-5, D 2e-4, betas (0, 0.999); 2 D steps per G step; EMA of G's
  weights (sec. 3, appendix C)               -> init_weights, train, get_args
- "standing statistics": before sampling, G_ema's BatchNorm statistics are re-estimated from
  batches of its own samples               -> standing_stats, load_generator, --standing-stats

Not from the paper: what changes results (from the author's code, BigGAN-PyTorch, where named)
- Batch 64 with the paper's batch-2048 recipe (appendix C). Adam eps 1e-8 is not in the paper:
  the code's default for these rates (BigGAN.py:61, :288; utils.py:295). The paper found the
  SA-GAN rates best at lower batch sizes; the launch scripts use them with 1 D step and no
  orthogonal penalty (scripts/launch_BigGAN_bs256x8.sh:5-9). Here that is --n-dis 1 --lr-g 1e-4
  --lr-d 4e-4 --ortho-beta 0; the script's --ema_start 20000 is the default here, its Adam eps
  1e-6 is not a flag.
- Widths: --g-ch 64 gives G 16*ch = 1024 channels at 4x4 and 8x8, halving to 128 at 64x64;
  --d-ch 64 gives D 64 channels at 64x64 up to 1024 at 4x4 (appendix B's pattern; at 32x32 the
  code has 4*ch in every block, here 16, 8, 4 as at the other sizes). SN eps 1e-6, as the launch
  scripts (the code's default: 1e-8). Self-attention's keys and values are max-pooled 2x2, as
  layers.py's Attention (:159-160).
- The orthogonal penalty is added to loss_G as the paper writes it; the code adds
  2*beta*(W W^T (1-I)) W to the gradient, which is the gradient of half the penalty. As the code
  (utils.py:646, ortho), it leaves out the shared class embedding and runs on the fp32 weights.
- Standing statistics as utils.py's accumulate_standing_stats (:1108) with layers.py's myBN
  compute them: the plain average over batches of each batch's mean and biased variance; from 16
  batches of 64 (its default count), with untruncated z whatever --truncation (sample.py's
  z_var 1) and uniform labels; training grids use G_ema's running statistics, copied from G. No
  cross-replica BatchNorm; one D forward on [real, fake] per D step, as the code does.
- Several attributes: each fake label's attributes are drawn independently and uniformly, as the
  paper draws its one class; standing statistics and unnamed --class attributes draw them from
  the training frequencies. D's spectral norm normalises the attributes' tables as one matrix.
- EMA half-life --ema-kimg 444: the paper's decay 0.9999 per step, at batch 64. G_ema is a copy
  of G for the first --ema-start 20000 steps (the launch scripts), then averages, no ramp-up.
Not from the paper: engineering
- bf16 autocast on GPUs, DDP, atomic checkpoints, resume: the plumbing block, as in every file.
- Standing statistics are computed once and kept in the cache folder ($GAN_CACHE_DIR, else
  ~/.cache/anime-gans), under a digest of G_ema's weights and class counts, the batch count and
  size, the device type and torch's version: a second --sample of a checkpoint starts in
  seconds, a changed checkpoint gets its own -> cached_standing_stats
- Spectral norm's power iteration and the orthogonal penalty run in fp32 under autocast.
- --sample and --init read BigGAN-PyTorch's weights (utils.py:687, save_weights: G.pth,
  G_ema.pth, D.pth, and state_dict.pth, whose config holds nn.ReLU modules, the one class
  rebuilt); its --G_shared --hier networks at 64, 128 and 256 are this file's. Nothing from a
  file is executed                           -> read_biggan_pytorch

Usage
    python biggan.py                                  # built-in toy faces (hair colours), 64x64
    python biggan.py --data ./faces                   # subfolders = classes; flat: one class
    python biggan.py --data ./faces --labels faces.csv --label-columns hair,eyes   # attributes
    python biggan.py --res 32 --steps 200 --batch 32 --g-ch 8 --d-ch 8   # CPU smoke run
    python biggan.py --resume --steps 60000           # continue out/biggan-toy/ckpt.pt
    torchrun --nproc_per_node=4 biggan.py --data ./faces
    python biggan.py --sample out/biggan-toy/ckpt.pt --n 144 --truncation 0.5 [--class blonde]
    python biggan.py --sample out/biggan-faces/ckpt.pt --class hair=blonde,eyes=blue  # others drawn
    python biggan.py --sample out/biggan-toy/ckpt.pt --standing-stats 0   # the stored statistics
    python biggan.py --sample out/biggan-toy/ckpt.pt --n 36 --truncation-sweep   # T 2 to 0.1
    python biggan.py --sample out/biggan-toy/ckpt.pt --n 16 --interp [--class 3]
    python biggan.py --sample weights/exp/G_ema.pth --class 3   # BigGAN-PyTorch's files
    python biggan.py --data ./faces --init weights/exp/G_ema.pth   # its G, G_ema, D; step 0
"""

import argparse
import contextlib
import copy
import hashlib
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

from common import (
    Batches,
    UserError,
    cache_dir,
    load_images,
    make_grid,
    save_gif,
    save_grid,
    save_samples,
)

MODEL = "biggan"


# --- model --------------------------------------------------------------------------------------

# channel multipliers of ch per block: 128 and 256 from appendix B (tables 4, 5); 32 and 64 in
# the same pattern. G blocks double the resolution from 4x4; D blocks halve it down to 4x4, then
# one more block at 4x4
G_CH = {32: [16, 8, 4], 64: [16, 8, 4, 2], 128: [16, 8, 4, 2, 1], 256: [16, 8, 8, 4, 2, 1]}
D_CH = {
    32: [2, 4, 8, 16],
    64: [1, 2, 4, 8, 16],
    128: [1, 2, 4, 8, 16, 16],
    256: [1, 2, 4, 8, 8, 16, 16],
}


def check_res(res):
    if res not in G_CH:
        raise UserError(f"{MODEL} builds resolutions {', '.join(map(str, G_CH))}; got --res {res}")


def z_chunks(z_dim, n):
    """Sizes of the n hierarchical-latent chunks: as equal as possible, summing to z_dim."""
    return [z_dim // n + (i < z_dim % n) for i in range(n)]


def label_table(n_classes):
    """n_classes (one attribute's class count, or a list of counts per attribute) -> the sizes
    per attribute, and each attribute's first row in one embedding table of sum(sizes) rows."""
    sizes = [n_classes] if isinstance(n_classes, int) else list(n_classes)
    offsets = torch.tensor([0, *sizes[:-1]]).cumsum(0)  # (k,)
    return sizes, offsets


class SpectralNorm:
    """Mixin for a layer with .weight: use W / sigma(W), with sigma from one power-iteration step
    per training forward (Miyato et al. 2018, Alg. 1). W is seen as (out, in*k*k); u persists as a
    buffer, so the estimate improves across steps and is checkpointed. Normalisation eps 1e-6."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)  # the layer's own __init__, next in the MRO
        self.register_buffer("u", F.normalize(torch.randn(self.weight.shape[0]), dim=0, eps=1e-6))

    def sn_weight(self):
        with torch.autocast(self.weight.device.type, enabled=False):  # power iteration in fp32
            W = self.weight.flatten(1)  # (out, in*k*k)
            with torch.no_grad():  # Alg. 1: v <- W^T u / |W^T u|, u <- W v / |W v|
                # v as u^T W, a matrix product (mm, not mv): torch.compile's backward then
                # keeps v, instead of computing it again from u after this forward stored the
                # new u (a wrong gradient where W has few rows: G's RGB layer)
                v = F.normalize((self.u[None] @ W)[0], dim=0, eps=1e-6)
                u = F.normalize(W @ v, dim=0, eps=1e-6)
                if self.training:  # the next forward starts from this u
                    self.u.copy_(u)
            sigma = u @ W @ v  # Alg. 1: sigma = u^T W v; the gradient flows through W only
        return self.weight / sigma


class SNConv2d(SpectralNorm, nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(x, self.sn_weight(), self.bias)


class SNLinear(SpectralNorm, nn.Linear):
    def forward(self, x):
        return F.linear(x, self.sn_weight(), self.bias)


class SNEmbedding(SpectralNorm, nn.Embedding):
    def forward(self, y):
        return F.embedding(y, self.sn_weight())


class SelfAttention(nn.Module):
    """SA-GAN attention as BigGAN uses it: keys and values max-pooled 2x2, output scaled by a gain
    gamma that starts at 0, so each block begins as the identity (Zhang et al. 2018)."""

    def __init__(self, c):
        super().__init__()
        self.theta = SNConv2d(c, max(c // 8, 1), 1, bias=False)
        self.phi = SNConv2d(c, max(c // 8, 1), 1, bias=False)
        self.g = SNConv2d(c, max(c // 2, 1), 1, bias=False)
        self.o = SNConv2d(max(c // 2, 1), c, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        B, C, H, W = x.shape
        q = self.theta(x).flatten(2).transpose(1, 2)  # (B, HW, C/8)
        k = F.max_pool2d(self.phi(x), 2).flatten(2).transpose(1, 2)  # (B, HW/4, C/8)
        v = F.max_pool2d(self.g(x), 2).flatten(2).transpose(1, 2)  # (B, HW/4, C/2)
        # softmax over j of s_ij = q_i . k_j, weighting the v_j (SA-GAN eq. 1-2): plain dot
        # products, no 1/sqrt(d). Under autocast the kernel forms the logits and their softmax in
        # fp32; only q, k, v and its output are bf16
        h = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=1.0)[:, 0]
        h = h.transpose(1, 2).reshape(B, -1, H, W)  # (B, HW, C/2) -> (B, C/2, H, W)
        return x + self.gamma * self.o(h)  # y = gamma o + x (SA-GAN eq. 3), (B, C, H, W)


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine; gain 1 + W_g c and bias W_b c from the conditioning vector
    c = [shared class embedding, z chunk] (sec. 3, appendix B)."""

    def __init__(self, c, cond_dim):
        super().__init__()
        self.bn = nn.BatchNorm2d(c, affine=False)
        self.gain = SNLinear(cond_dim, c, bias=False)
        self.bias = SNLinear(cond_dim, c, bias=False)

    def forward(self, x, cond):  # x (B, C, H, W), cond (B, cond_dim)
        gain = (1 + self.gain(cond))[:, :, None, None]  # (B, C, 1, 1)
        return self.bn(x) * gain + self.bias(cond)[:, :, None, None]


class GBlock(nn.Module):
    """cBN-ReLU-up-conv3x3-cBN-ReLU-conv3x3, plus an upsampled 1x1-conv shortcut (appendix B,
    fig. 15b)."""

    def __init__(self, c_in, c_out, cond_dim):
        super().__init__()
        self.bn1 = ConditionalBatchNorm2d(c_in, cond_dim)
        self.bn2 = ConditionalBatchNorm2d(c_out, cond_dim)
        self.conv1 = SNConv2d(c_in, c_out, 3, padding=1)
        self.conv2 = SNConv2d(c_out, c_out, 3, padding=1)
        self.skip = SNConv2d(c_in, c_out, 1)

    def forward(self, x, cond):  # (B, c_in, H, W) -> (B, c_out, 2H, 2W)
        h = F.interpolate(F.relu(self.bn1(x, cond)), scale_factor=2)
        h = self.conv2(F.relu(self.bn2(self.conv1(h), cond)))
        return h + self.skip(F.interpolate(x, scale_factor=2))


class Generator(nn.Module):
    """(z (B, z_dim), y (B,) or (B, k)) -> image (B, 3, res, res). z's first chunk feeds the 4x4
    input layer; each block's cBN sees [shared(y), its own chunk]; self-attention after the block
    whose output is attn_res wide. n_classes: a class count, or a list of value counts for k
    attributes; shared(y) is then the sum of the k attributes' embeddings."""

    def __init__(self, res=64, z_dim=120, ch=64, n_classes=1, shared_dim=128, attn_res=None):
        super().__init__()
        self.res, self.z_dim = res, z_dim
        mults = G_CH[res]
        c_in, c_out = [ch * m for m in [16] + mults[:-1]], [ch * m for m in mults]
        self.z_sizes = z_chunks(z_dim, len(mults) + 1)
        self.sizes, offsets = label_table(n_classes)
        self.register_buffer("offsets", offsets, persistent=False)  # not in the state dict
        self.shared = nn.Embedding(sum(self.sizes), shared_dim)
        self.linear = SNLinear(self.z_sizes[0], c_in[0] * 4 * 4)
        self.blocks = nn.ModuleList(
            GBlock(i, o, shared_dim + zc) for i, o, zc in zip(c_in, c_out, self.z_sizes[1:])
        )
        self.attn_at = int(math.log2(attn_res)) - 3 if attn_res else None  # block i: 8 * 2**i
        self.attn = SelfAttention(c_out[self.attn_at]) if attn_res else None
        self.out = nn.Sequential(
            nn.BatchNorm2d(c_out[-1]), nn.ReLU(), SNConv2d(c_out[-1], 3, 3, padding=1), nn.Tanh()
        )

    def conditions(self, z, y):
        """The input layer's chunk, and one cBN conditioning vector [shared(y), z chunk] per
        block (the shared embedding: sec. 3)."""
        zs = torch.split(z, self.z_sizes, dim=1)
        # several attributes: the sum of their embeddings, (B, k, shared_dim) -> (B, shared_dim)
        e = self.shared(y) if y.ndim == 1 else self.shared(y + self.offsets).sum(1)
        return zs[0], [torch.cat([e, zc], 1) for zc in zs[1:]]

    def forward(self, z, y):
        z0, conds = self.conditions(z, y)
        h = self.linear(z0).view(len(z), -1, 4, 4)  # (B, 16ch, 4, 4)
        for i, (block, cond) in enumerate(zip(self.blocks, conds)):
            h = block(h, cond)  # (B, C, s, s) -> (B, C', 2s, 2s)
            if i == self.attn_at:
                h = self.attn(h)
        return self.out(h)  # (B, 3, res, res)


class DBlock(nn.Module):
    """(ReLU)-conv3x3-ReLU-conv3x3-avgpool, plus a 1x1-conv shortcut (appendix B, fig. 15c). The
    first block skips the leading ReLU so the image is not clipped."""

    def __init__(self, c_in, c_out, down=True, preact=True):
        super().__init__()
        self.down, self.preact = down, preact
        self.conv1 = SNConv2d(c_in, c_out, 3, padding=1)
        self.conv2 = SNConv2d(c_out, c_out, 3, padding=1)
        self.skip = SNConv2d(c_in, c_out, 1) if c_in != c_out or down else None

    def forward(self, x):  # (B, c_in, H, W) -> (B, c_out, H/2, W/2), or H, W with down=False
        h = self.conv2(F.relu(self.conv1(F.relu(x) if self.preact else x)))
        if self.down:  # avg-pool and a 1x1 conv commute: pooling the shortcut first is cheaper
            h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
        return h + (self.skip(x) if self.skip is not None else x)


class Discriminator(nn.Module):
    """(image (B, 3, res, res), y (B,) or (B, k)) -> logit (B,): a linear head on sum-pooled ReLU
    features plus the projection term <embed(y), features> (Miyato & Koyama 2018), summed over
    the k attributes when n_classes is a list of value counts."""

    def __init__(self, res=64, ch=64, n_classes=1, attn_res=None):
        super().__init__()
        mults = D_CH[res]
        c = [3] + [ch * m for m in mults]
        self.blocks = nn.ModuleList(
            DBlock(c[i], c[i + 1], down=i < len(mults) - 1, preact=i > 0) for i in range(len(mults))
        )
        self.attn_at = int(math.log2(res // attn_res)) - 1 if attn_res else None  # res / 2**(i+1)
        self.attn = SelfAttention(c[self.attn_at + 1]) if attn_res else None
        self.linear = SNLinear(c[-1], 1)
        self.sizes, offsets = label_table(n_classes)
        self.register_buffer("offsets", offsets, persistent=False)  # not in the state dict
        self.embed = SNEmbedding(sum(self.sizes), c[-1])

    def forward(self, x, y):
        h = x
        for i, block in enumerate(self.blocks):
            h = block(h)  # (B, C, s, s) -> (B, C', s/2, s/2); the last block stays at 4x4
            if i == self.attn_at:
                h = self.attn(h)
        h = F.relu(h).sum((2, 3))  # (B, C): global sum pooling
        if y.ndim == 1:
            return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(1)  # psi(h) + <embed(y), h>
        e = self.embed(y + self.offsets)  # (B, k, C): one embedding per attribute
        return self.linear(h).squeeze(1) + (e * h[:, None]).sum((1, 2))  # + sum_i <embed(y_i), h>


def init_weights(m):
    """Orthogonal init (Saxe et al. 2014) for every conv, linear and embedding (sec. 3)."""
    if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
        nn.init.orthogonal_(m.weight)


# --- losses -------------------------------------------------------------------------------------


def loss_d(logits_real, logits_fake):
    """Hinge loss (Lim & Ye 2017), as in SA-GAN: D gets no gradient from samples it already
    classifies beyond the margin, which keeps it from overfitting easy examples."""
    return F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean()


def loss_g(logits_fake):
    return -logits_fake.mean()


def ortho_penalty(G, beta):
    """beta * sum_W ||W W^T * (1 - I)||_F^2 over G's weights with W as (out, in*k*k) (sec. 3.1,
    eq. 3): filters are pushed apart in angle but their norms are left free. The shared class
    embedding is left out. ||W W^T||_F = ||W^T W||_F, and diag(W W^T) holds the squared row
    norms, so the smaller Gram matrix suffices (the 4x4 input layer's W is 16384 x 24). In fp32
    with autocast off wherever it is called: the penalty is the difference of two large sums, and
    a bf16 Gram matrix keeps 8 significant bits per entry."""
    total = 0.0
    for name, p in G.named_parameters():
        if p.ndim < 2 or name.startswith("shared."):
            continue
        with torch.autocast(p.device.type, enabled=False):
            W = p.float().flatten(1)  # (out, in*k*k)
            gram = W.t() @ W if W.shape[0] > W.shape[1] else W @ W.t()  # the smaller Gram matrix
            # ||W W^T * (1 - I)||_F^2 = ||W W^T||_F^2 - sum of the squared diagonal (eq. 3)
            total = total + gram.square().sum() - W.square().sum(1).square().sum()
    return beta * total


# --- training -----------------------------------------------------------------------------------


def ema_beta(batch, ema_kimg):
    """Per-step decay whose half-life is ema_kimg thousand images."""
    return 0.5 ** (batch / (ema_kimg * 1000)) if ema_kimg > 0 else 0.0


def ema_half_life(step, args):
    """--ema-kimg, ramped up: at most --ema-rampup of the thousands of images seen by `step`
    (StyleGAN2-ADA's ramp), so early G_ema follows G closely; --ema-rampup 0: no ramp-up."""
    seen = step * args.batch / 1000
    return min(args.ema_kimg, seen * args.ema_rampup) if args.ema_rampup else args.ema_kimg


def random_labels(n_classes, n, device):
    """Fake labels, each attribute uniform over its values as the paper's class is: (n,) for
    n_classes a count, (n, k) for a list of k counts."""
    if isinstance(n_classes, int):
        return torch.randint(n_classes, (n,), device=device)
    return torch.stack([torch.randint(c, (n,), device=device) for c in n_classes], 1)


@torch.no_grad()
def update_ema(G_ema, G, beta):
    """G_ema <- beta * G_ema + (1 - beta) * G for parameters; buffers (BN statistics) are copied."""
    torch._foreach_lerp_(list(G_ema.parameters()), list(G.parameters()), 1.0 - beta)
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def train(args):
    check_res(args.res)
    run = Run(args)  # device, precision, DDP, seed, --resume: the plumbing block below
    args, device = run.args, run.device
    args.attn_res = args.res // 2 if args.attn_res is None else args.attn_res
    sizes = [args.res >> k for k in range(1, len(G_CH[args.res]))]  # res/2 down to 8
    if args.attn_res and args.attn_res not in sizes:
        choose = f"choose a power of two from 8 to {args.res // 2}, or 0 for none"
        raise UserError(f"--attn-res {args.attn_res}: {choose}")
    columns = args.label_columns.split(",") if args.label_columns else None
    data = load_images(args.data, args.res, run.rank == 0, args.labels, columns)
    batches = Batches(
        data, args.batch // run.world, device, args.seed, run.rank, run.world, args.flip
    )
    attrs = attributes(data.classes)  # [(name, values)]: one, or one per CSV column
    counts = class_counts(data.classes, data.labels)
    n_classes = len(data.classes) if len(attrs) == 1 else [len(v) for _, v in attrs]
    if n_classes == 1:
        run.say(f"{args.data} has one class: G and D train with a single class embedding")
    G = Generator(args.res, args.z_dim, args.g_ch, n_classes, args.shared_dim, args.attn_res)
    G = G.to(device)
    D = Discriminator(args.res, args.d_ch, n_classes, args.attn_res).to(device)
    G.apply(init_weights)
    D.apply(init_weights)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    # Adam with beta1 0 (no momentum), beta2 0.999 (appendix C); eps 1e-8 (not in the paper)
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr_g, betas=(0.0, 0.999), eps=1e-8)
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=(0.0, 0.999), eps=1e-8)
    if run.ckpt is not None:  # a checkpoint from before class counts were kept
        run.ckpt.setdefault("class_counts", counts)
    # --resume loads these
    run.track(
        classes=data.classes,
        class_counts=counts,
        G=G,
        D=D,
        G_ema=G_ema,
        opt_G=opt_G,
        opt_D=opt_D,
        loader=batches,
    )
    scaler_G, scaler_D = run.scaler_G, run.scaler_D  # fp16 loss scaling (no-ops in bf16, fp32)
    G_train, D_train = run.wrap(G, D)  # DDP under torchrun, torch.compile with --compile
    z_fixed, y_fixed, cols, about = fixed_latents(data.classes, counts, args.z_dim, args.seed)
    z_fixed, y_fixed = z_fixed.to(device), y_fixed.to(device)
    about = f"{len(data.labels)} images, {about}"

    def grid():  # several attributes: one column per value of the second
        x = G_ema(z_fixed, y_fixed)
        return make_grid(x, nrow=cols) if cols else x

    for step in run.steps(grid=grid, about=about):
        # (1) n_dis D steps per G step, each on its own real batch (sec. 3, appendix C: 2)
        for _ in range(args.n_dis):
            x_real, y_real = next(batches)  # (B, 3, res, res) in [-1, 1], labels (B,) or (B, k)
            x_real = x_real.contiguous(memory_format=run.layout)
            B = x_real.shape[0]
            z = torch.randn(B, args.z_dim, device=device)
            y_fake = random_labels(n_classes, B, device)
            # minimise the hinge loss E[max(0, 1 - D(x, y))] + E[max(0, 1 + D(G(z, y), y))]
            # (sec. 3; SA-GAN eq. 4), one D forward on [real, fake]
            with run.autocast:
                with torch.no_grad():
                    x_fake = G_train(z, y_fake)
                x_all, y_all = torch.cat([x_real, x_fake]), torch.cat([y_real, y_fake])
                logits = D_train(x_all, y_all).float()  # (2B,)
                logits_real, logits_fake = logits[:B], logits[B:]
                loss_D = loss_d(logits_real, logits_fake)
            opt_D.zero_grad(set_to_none=True)
            scaler_D.scale(loss_D).backward()
            scaler_D.step(opt_D)
            scaler_D.update()

        # (2) update G: minimise -E[D(G(z, y), y)] (SA-GAN eq. 4) + beta * R(W) (sec. 3.1, eq. 3)
        z = torch.randn(B, args.z_dim, device=device)
        y_fake = random_labels(n_classes, B, device)
        with run.autocast:
            loss_G = loss_g(D_train(G_train(z, y_fake), y_fake).float())
        loss_ortho = ortho_penalty(G, args.ortho_beta)
        opt_G.zero_grad(set_to_none=True)
        scaler_G.scale(loss_G + loss_ortho).backward()
        scaler_G.step(opt_G)
        scaler_G.update()

        # (3) G_ema: a moving average of G's weights (appendix C); a copy of G until --ema-start
        beta = ema_beta(args.batch, ema_half_life(step, args))
        update_ema(G_ema, G, beta if step >= args.ema_start else 0.0)
        d_real, d_fake = logits_real.mean(), logits_fake.mean()  # of the last D step
        run.log(loss_D=loss_D, loss_G=loss_G, d_real=d_real, d_fake=d_fake, ortho=loss_ortho)
    return G_ema


# --- sampling -----------------------------------------------------------------------------------


def sample_z(n, z_dim, gen, truncation=None):
    """z ~ N(0, I); with truncation T, entries beyond |T| are redrawn until none are left: the
    truncation trick (sec. 3.1)."""
    z = torch.randn(n, z_dim, generator=gen)
    while truncation is not None and (bad := z.abs() > truncation).any():
        z[bad] = torch.randn(int(bad.sum()), generator=gen)
    return z


@torch.no_grad()
def standing_stats(G, n_batches, batch=64, seed=0):
    """The paper's "standing statistics": G's BatchNorm running mean and variance are set to the
    plain average, over n_batches forward passes of G's own samples, of each batch's per-channel
    mean and biased variance (E[x^2] - E[x]^2 over the batch and the map). G_ema's running
    statistics are copies of G's, the statistics of other weights; these are its own. z ~ N(0, I)
    untruncated, whatever the truncation of the samples. Labels: uniform over one attribute's
    classes; several attributes are drawn from their training frequencies (G.classes,
    G.class_counts), as generate() draws them. Only the BatchNorm layers run in training mode, so
    spectral norm's u vectors stay as they are. The same seed gives the same statistics. Returns
    G in eval mode."""
    gen, device = torch.Generator().manual_seed(seed), next(G.parameters()).device
    bns = [m for m in G.modules() if isinstance(m, nn.BatchNorm2d)]
    sums = {bn: 0.0 for bn in bns}  # per layer: (2, C), the batch means and variances summed

    def add_batch_stats(bn, inputs):  # inputs[0]: (B, C, H, W)
        var, mean = torch.var_mean(inputs[0], (0, 2, 3), correction=0)  # biased: / (B*H*W)
        sums[bn] = sums[bn] + torch.stack([mean, var])

    hooks = [bn.register_forward_pre_hook(add_batch_stats) for bn in bns]
    for bn in bns:  # each batch is normalised by its own statistics; the stored ones stay as is
        bn.train()
        bn.track_running_stats = False
    for _ in range(n_batches):
        z = sample_z(batch, G.z_dim, gen)  # (batch, z_dim), untruncated
        if len(G.sizes) == 1:
            y = torch.randint(G.sizes[0], (batch,), generator=gen)
        else:
            y = draw_labels(G.classes, G.class_counts, batch, gen)
        G(z.to(device), y.to(device))
    for bn, hook in zip(bns, hooks):
        hook.remove()
        bn.track_running_stats = True
        bn.running_mean.copy_(sums[bn][0] / n_batches)
        bn.running_var.copy_(sums[bn][1] / n_batches)
    return G.eval()


STANDING = ("running_mean", "running_var")  # the buffers that standing statistics set


def cached_standing_stats(G, n_batches, batch=64):
    """standing_stats(G, n_batches, batch), computed once and kept: the BatchNorm statistics are
    saved in common.cache_dir() under a digest of everything they depend on (G's weights and
    buffers, its class counts, n_batches, batch, the device type, torch's version), so a second
    load of the same checkpoint reads them, and a changed checkpoint computes its own."""
    device = next(G.parameters()).device
    key = hashlib.sha256(repr([n_batches, batch, device.type, torch.__version__]).encode())
    key.update(repr(G.class_counts).encode())
    for name, t in sorted(G.state_dict().items()):
        key.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        key.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    path = os.path.join(cache_dir(), f"{MODEL}_standing_{key.hexdigest()[:16]}.pt")
    if os.path.exists(path):
        try:  # a cut-short or foreign file is not trusted: computed again and replaced
            stats = read_torch(path, device)
            if sorted(stats) != sorted(k for k in G.state_dict() if k.endswith(STANDING)):
                raise UserError("not the statistics of this G")
            G.load_state_dict(stats, strict=False)
            return G.eval()
        except (UserError, AttributeError, TypeError, RuntimeError) as e:
            print(f"standing statistics cache {path} unreadable ({e}): computed again", flush=True)
    G = standing_stats(G, n_batches, batch)
    stats = {k: v for k, v in G.state_dict().items() if k.endswith(STANDING)}
    data, tmp = io.BytesIO(), f"{path}.{os.getpid()}.tmp"
    torch.save(stats, data)  # serialised first: a full disk then fails in a plain write
    try:
        os.makedirs(cache_dir(), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data.getbuffer())
        os.replace(tmp, path)  # whole or absent, also for another process reading it
    except OSError:  # an unwritable cache folder or a full disk: computed again next time
        if os.path.exists(tmp):
            os.remove(tmp)
    return G


ARCH = ("res", "z_dim", "g_ch", "d_ch", "shared_dim", "attn_res")  # the arguments that shape G, D
BIGGAN_PYTORCH = re.compile(r"(G_ema|G|D|state_dict)(_[^.]*)?\.pth")  # utils.save_weights's names


def read_weights(path, device="cpu"):
    """A checkpoint of this file, or BigGAN-PyTorch's weights (read_biggan_pytorch), as {"args":
    the sizes the file holds (ARCH), "G", "D", "G_ema", "classes"}: what load_generator and --init
    read. Nothing in a file is executed: torch.load with weights_only=True."""
    device = check_device(device)
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}")
    name = BIGGAN_PYTORCH.fullmatch(os.path.basename(path))
    found = None if name and name[1] == "state_dict" else read_torch(path, device)
    if isinstance(found, dict) and "model" in found:
        ckpt = load_checkpoint(path, device)
        return dict(ckpt, args={k: ckpt["args"][k] for k in ARCH})
    if name is None:
        why = "nor a BigGAN-PyTorch G.pth, G_ema.pth, D.pth or state_dict.pth"
        raise UserError(f"{path} is not a {MODEL} checkpoint {why}")
    return read_biggan_pytorch(path, name, found, device)


def read_biggan_pytorch(path, name, found, device):
    """ajbrock/BigGAN-PyTorch's weights, as its utils.save_weights writes them: G.pth, G_ema.pth
    and D.pth (state dicts) and state_dict.pth (the training state; train.py's arguments in its
    "config"), each name with the same suffix (e.g. G_ema_best0.pth); `path` is one of them (found:
    its contents), the others are read from beside it where they are there. Their G must be
    --G_shared --hier, as ours always is. Sizes come from the shapes; the config, where it is
    readable with nothing rebuilt but the nn.ReLU modules train.py puts into it (not once
    train.py's evaluation has stored its numpy scores there), is checked for what the shapes do
    not show. Without a G, its sizes come from the command line. Classes are named by index: the
    files name none."""
    folder, suffix = os.path.dirname(path), name[2] or ""
    files = {k: os.path.join(folder, f"{k}{suffix}.pth") for k in ("G", "G_ema", "D", "state_dict")}
    nets, sizes = dict(G=None, G_ema=None, D=None), {}
    for k in [k for k in nets if os.path.isfile(files[k])]:
        sd = found if k == name[1] else read_torch(files[k], device)
        sd = {n.removeprefix("module."): v for n, v in (sd.items() if isinstance(sd, dict) else ())}
        need = ("embed", "blocks.0.0.conv1") if k == "D" else ("linear", "blocks.0.0.bn1.gain")
        if lacks := [n for n in need if n + ".weight" not in sd]:
            raise UserError(f"{files[k]} is not a BigGAN-PyTorch {k[0]} (no {lacks[0]}.weight)")
        if k != "D" and "shared.weight" not in sd:
            raise UserError(f"{files[k]}: trained without --G_shared; {MODEL}.py's G has it")
        nets[k], shapes = biggan_pytorch_keys(sd), biggan_pytorch_sizes(sd, k, files[k])
        for s, v in shapes.items():  # G, G_ema and D must agree
            if sizes.setdefault(s, v) != v:
                raise UserError(f"{files[k]}: its {s} is {v}, the other files' {sizes[s]}")
    if not any(sd is not None for sd in nets.values()):
        raise UserError(f"{path}: no G{suffix}.pth, G_ema{suffix}.pth or D{suffix}.pth beside it")
    config = {}
    if os.path.isfile(files["state_dict"]):
        with contextlib.suppress(UserError):
            state = read_torch(files["state_dict"], device, allow=[nn.ReLU])
            config = state.get("config", {}) if isinstance(state, dict) else {}
    for k, ours in (("norm_style", "bn"), ("BN_eps", 1e-5)):
        if config.get(k, ours) != ours:
            raise UserError(f"{files['state_dict']}: trained with --{k} {config[k]}; ours: {ours}")
    if sizes["res"] not in G_CH:
        builds = ", ".join(map(str, G_CH))
        raise UserError(f"{path}: its networks are for {sizes['res']}px; {MODEL} builds {builds}")
    n, a = sizes.pop("n_classes"), sizes
    for k, sd in nets.items():
        if sd is None:
            continue
        if k == "D":
            net = Discriminator(a["res"], a["d_ch"], n, a["attn_res"])
        else:
            net = Generator(a["res"], a["z_dim"], a["g_ch"], n, a["shared_dim"], a["attn_res"])
        try:
            net.load_state_dict(sd)
        except RuntimeError as e:  # the first line that says which layer differs, cut short
            why = next((t.strip() for t in str(e).splitlines()[1:] if t.strip()), str(e))
            why = why if len(why) < 150 else why[:147] + "..."
            raise UserError(f"{files[k]}: not a network {MODEL}.py builds ({why})") from None
    return dict(args=sizes, classes=[str(i) for i in range(n)], **nets)


def biggan_pytorch_keys(sd):
    """Their state dict -> ours: their blocks.i.0 is our blocks.i, the one blocks.i.1 our attn,
    conv_sc our skip, output_layer our out, a BatchNorm's gain its weight and stored_mean/var
    (bn.stored_* with --mybn, bn.running_* with --cross_replica) its running_mean/var; each
    spectral-norm u0 (1, out) is our u (out,). Their u1.., sv0.. (more singular values, sigma as
    logged) do not change the forward: W / sigma_0, sigma_0 from one power iteration from u0."""
    ours = {}
    for k, v in sd.items():
        if re.search(r"\.(sv\d+|u[1-9]\d*|accumulation_counter|num_batches_tracked)$", k):
            continue
        k = re.sub(r"^blocks\.(\d+)\.0\.", r"blocks.\1.", re.sub(r"^blocks\.\d+\.1\.", "attn.", k))
        k = k.replace("conv_sc.", "skip.").replace("output_layer.", "out.")
        k = re.sub(r"\.(bn\.)?(stored|running)_(mean|var)$", r".running_\3", k)
        k = re.sub(r"(bn\d\.)running_", r"\1bn.running_", k).replace("out.0.gain", "out.0.weight")
        ours[k[:-1] if k.endswith(".u0") else k] = v.reshape(-1) if k.endswith(".u0") else v
    for k in [k for k in ours if k.endswith("running_mean")]:  # BatchNorm2d's counter
        ours[k.replace("running_mean", "num_batches_tracked")] = torch.tensor(0)
    return ours


def biggan_pytorch_sizes(sd, k, path):
    """Our arguments from their G or D's shapes: res from the number of blocks, the widths from
    the first layers, attn_res from the one block followed by attention (0: none)."""
    blocks = {int(m[1]) for n in sd if (m := re.match(r"blocks\.(\d+)\.0\.", n))}
    at = sorted({int(m[1]) for n in sd if (m := re.match(r"blocks\.(\d+)\.1\.", n))})
    if len(at) > 1:
        raise UserError(f"{path}: attention after {len(at)} blocks; {MODEL}.py builds one at most")
    if k == "D":  # blocks halve res down to 4x4, then one more at 4x4
        res = 2 << len(blocks)
        d_ch = sd["blocks.0.0.conv1.weight"].shape[0] // D_CH.get(res, [1])[0]  # D_CH[res][0] ch
        attn_res = res >> (at[0] + 1) if at else 0
        return dict(res=res, d_ch=d_ch, n_classes=sd["embed.weight"].shape[0], attn_res=attn_res)
    n, shared_dim = sd["shared.weight"].shape
    z_chunk = sd["linear.weight"].shape[1]  # one of len(blocks) + 1 equal chunks
    if sd["blocks.0.0.bn1.gain.weight"].shape[1] != shared_dim + z_chunk:
        raise UserError(f"{path}: trained without --hier; {MODEL}.py's G splits z over its blocks")
    g_ch = sd["linear.weight"].shape[0] // (16 * 4 * 4)  # 16 ch channels at 4x4
    a = dict(res=4 << len(blocks), z_dim=z_chunk * (len(blocks) + 1), g_ch=g_ch)
    return a | dict(shared_dim=shared_dim, n_classes=n, attn_res=8 << at[0] if at else 0)


def load_generator(path, device="cpu", standing=16, batch=64):
    """Checkpoint -> G_ema (G where it has none) in eval mode, with .res, .z_dim, .classes and
    .class_counts for generate(). Its BatchNorm statistics are standing statistics from `standing`
    batches of `batch` samples, computed on the first load and then read from the cache folder
    (cached_standing_stats); standing=0 keeps the ones stored in the checkpoint."""
    ckpt = read_weights(path, device)
    if ckpt["G_ema"] is None and ckpt["G"] is None:
        raise UserError(f"{path} holds no generator")
    a, n_classes = ckpt["args"], [len(values) for _, values in attributes(ckpt["classes"])]
    G = Generator(a["res"], a["z_dim"], a["g_ch"], n_classes, a["shared_dim"], a["attn_res"])
    G.load_state_dict(ckpt["G_ema"] if ckpt["G_ema"] is not None else ckpt["G"])
    G.classes = ckpt["classes"]
    # checkpoints from before class counts were kept, and BigGAN-PyTorch's: uniform
    G.class_counts = ckpt.get("class_counts", [[1] * n for n in n_classes])
    G = G.to(device).eval().requires_grad_(False)
    return cached_standing_stats(G, standing, batch) if standing else G


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
    """y as labels, (n,) for one attribute, (n, k) for several. None: one attribute cycles
    through the classes (0, 1, 2, ...); several are drawn from their training frequencies,
    seeded by `seed`. An int is one class (one attribute); any y is checked by check_labels.
    One class (trained without labels): y is ignored, as the unconditional models do."""
    if y is None and len(G.sizes) > 1:
        return draw_labels(G.classes, G.class_counts, n, torch.Generator().manual_seed(seed))
    if y is None or G.sizes == [1]:
        return torch.arange(n) % G.sizes[0]
    return check_labels(G.classes, y, n)


@torch.no_grad()
def generate(G, n, seed=0, truncation=None, y=None):
    """n images in [-1, 1], (n, 3, res, res) float32 on the CPU; the same seed, the same images.
    truncation: a bound on |z| (entries beyond it are redrawn). y: a class index, or labels (n,)
    or (n, k); None: see labels."""
    z = sample_z(n, G.z_dim, torch.Generator().manual_seed(seed), truncation)
    y, device = labels(G, n, y, seed), next(G.parameters()).device
    xs = [G(z[i : i + 256].to(device), y[i : i + 256].to(device)) for i in range(0, n, 256)]
    return torch.cat([x.float().cpu() for x in xs])


@torch.no_grad()
def interpolation_frames(G, n, seed=0, truncation=None, y=None, keys=4, steps=16):
    """Frames of n images, each moving on a great circle through `keys` latents and back; each
    image keeps its class."""
    gen, device = torch.Generator().manual_seed(seed), next(G.parameters()).device
    zs, frames = [sample_z(n, G.z_dim, gen, truncation) for _ in range(keys)], []
    y = labels(G, n, y, seed).to(device)
    for a, b in zip(zs, zs[1:] + zs[:1]):
        cos = (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1, keepdim=True)
        omega = torch.arccos(cos.clamp(-1, 1)).clamp_min(1e-6)  # (n, 1): the angle a to b
        for t in torch.linspace(0, 1, steps + 1)[:-1]:
            z = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
            frames.append(make_grid(G(z.to(device), y).float().cpu()))
    return frames


def truncation_frames(G, n, seed=0, y=None, t_max=2.0, t_min=0.1, steps=20):
    """The truncation trade-off (sec. 3.1, fig. 2a) as frames, T from t_max down to t_min and
    back. The same seed keeps every z entry inside |T|, so only the redrawn ones change."""
    ts = torch.linspace(t_max, t_min, steps).tolist()
    frames = [make_grid(generate(G, n, seed, t, y)) for t in ts]
    return frames + frames[-2:0:-1]


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


def sample(args):
    if args.interp and args.truncation_sweep:
        raise UserError("choose one of --interp, --truncation-sweep")
    device, standing = setup_device(args.device)[0], args.standing_stats
    if standing < 0:
        raise UserError(f"--standing-stats {standing}: a number of batches (0: none)")
    # the stored statistics first: the standing ones are computed below, once --class is checked
    G = load_generator(args.sample, device, standing=0)
    nrow, tag, attrs = math.ceil(math.sqrt(args.n)), f"seed{args.seed}", attributes(G.classes)
    y = torch.arange(args.n) // nrow % len(G.classes) if len(attrs) == 1 else None  # a class a row
    if args.class_name is not None and G.sizes == [1]:
        raise UserError("this checkpoint was trained unconditionally (one class): drop --class")
    if args.class_name is not None:  # the named attributes set, the others drawn
        fixed = parse_class(G.classes, args.class_name)
        gen = torch.Generator().manual_seed(args.seed)
        y = draw_labels(G.classes, G.class_counts, args.n, gen, fixed)
        tag += "".join(f"_{attrs[i][1][v]}" for i, v in fixed.items())
    if args.truncation is not None:
        tag += f"_trunc{args.truncation:g}"
    if standing:
        G = cached_standing_stats(G, standing, args.batch)
    folder = os.path.dirname(args.sample)
    if args.interp:
        frames = interpolation_frames(G, args.n, args.seed, args.truncation, y)
        path = save_gif(frames, os.path.join(folder, f"interp_{tag}.gif"))
    elif args.truncation_sweep:
        frames = truncation_frames(G, args.n, args.seed, y)
        path = save_gif(frames, os.path.join(folder, f"truncation_{tag}.gif"))
    else:
        x = generate(G, args.n, args.seed, args.truncation, y)
        path = save_grid(x, os.path.join(folder, f"samples_{tag}.png"), nrow=nrow)
    print(path)


# bf16 on a CPU: channels_last measured slower for this model's G and D step, 64x64 (fp32 NCHW = 1x:
# 1.86x vs NCHW's 1.98x; README, CPU table). fp32 stays NCHW on a CPU: the same numbers as before
CPU_CHANNELS_LAST = False


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
        "BigGAN (Brock et al. 2018) for anime faces.",
        steps=50000,
        batch=64,
        lr_g=5e-5,
        lr_d=2e-4,
        ema_kimg=444.0,
        ema_rampup=0.0,  # G_ema = G until --ema-start, then the full half-life: no ramp-up
        truncation="redraw z entries beyond |T| (a bound on z: the truncation trick, sec. 3.1)",
    )
    add, pos_int = p.add_argument, positive(int)
    add("--truncation-sweep", action="store_true", help="sampling: a GIF, T from 2 to 0.1 and back")
    add(
        "--class",
        dest="class_name",
        metavar="SPEC",
        help="sampling: only this class (name, or index), or attribute values, any subset: "
        "hair=blonde,eyes=blue (the others drawn from their training frequencies)",
    )
    add(
        "--labels",
        metavar="FILE.csv",
        help="attribute labels: a CSV with a file column (paths relative to --data) and "
        "attribute columns; default: subfolders",
    )
    add("--label-columns", metavar="A,B", help="comma-separated --labels columns; default: all")
    add("--z-dim", type=pos_int, default=120, help="latent size: one chunk per G block, +1")
    add("--shared-dim", type=pos_int, default=128, help="size of G's shared class embedding")
    add("--g-ch", type=pos_int, default=64, help="G width: 16*ch channels at 4x4, 2*ch at 64x64")
    add("--d-ch", type=pos_int, default=64, help="D width: ch channels at 64x64, 16*ch at 4x4")
    add(
        "--attn-res",
        type=int,
        help="self-attention at this map size in G and D; unset: res/2; 0: none",
    )
    add("--n-dis", type=pos_int, default=2, help="D steps per G step (the paper's 2)")
    add("--ortho-beta", type=float, default=1e-4, help="orthogonal regularisation beta (eq. 3)")
    add("--ema-start", type=int, default=20000, help="G steps with G_ema = G, then averaging")
    add(
        "--standing-stats",
        type=int,
        default=16,
        metavar="N",
        help="sampling: G_ema's BatchNorm statistics from N batches of --batch of its samples, "
        "computed once per checkpoint and kept in the cache folder ($GAN_CACHE_DIR); 0: the "
        "stored ones",
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
