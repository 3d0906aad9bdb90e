"""BigGAN: "Large Scale GAN Training for High Fidelity Natural Image Synthesis", Andrew Brock,
Jeff Donahue, Karen Simonyan, 2018. arXiv:1809.11096.

Paper -> code
- SA-GAN baseline: ResNet blocks, self-attention, spectral norm in G and D (sec. 3)
                                                    -> GBlock, DBlock, SelfAttention, SpectralNorm
- class-conditional BatchNorm in G, its gains and biases a linear map of [shared class embedding,
  chunk of z]; hierarchical latent: z split into one chunk for the input layer and one per block
  (sec. 3, "shared embedding", "hierarchical latent spaces"; appendix B)
                                                    -> ConditionalBatchNorm2d, Generator, z_chunks
- projection discriminator: D(x, y) = psi(phi(x)) + <embed(y), phi(x)> (Miyato & Koyama 2018)
                                                    -> Discriminator
- hinge loss (sec. 3)                               -> hinge_loss_d, hinge_loss_g
- orthogonal regularisation, off-diagonal form, beta 1e-4 (sec. 3.1)   -> ortho_penalty
- truncation trick: z entries beyond |T| are resampled (sec. 3.1)      -> sample_z, truncation_frames
- orthogonal init; Adam betas (0, 0.999); 2 D steps per G step; EMA of G, decay 0.9999
  (sec. 3, appendix C)
                                                    -> init_weights, train()

Not from the paper
- lr G 1e-4, D 4e-4, Adam eps 1e-6 and SN eps 1e-6: the author's PyTorch recipe (BigGAN-PyTorch,
  launch_BigGAN_bs256x8.sh). The paper's 128 px run halved both (5e-5, 2e-4) at batch 2048; at our
  batch 64 each step sees 32x fewer images, so the halved rates would only make a short run slower,
  and the 4:1 D:G ratio the paper keeps is kept here.
- the orthogonal penalty is added to loss_G as the paper writes it; the author's code adds
  2*beta*(W W^T (1-I)) W straight to the gradient, which is the gradient of half the penalty.
- sampling and G_ema use BatchNorm running statistics (no "standing statistics"); no cross-replica
  BatchNorm; one D forward on [fake, real] per D step, as the author's code does.
- EMA half-life --ema-kimg 444: the paper's decay 0.9999 per step, at batch 64; --ema-start 20000
  is the author's code. bf16 autocast on CUDA, DDP, checkpoints: the skeleton shared by every file.
- Widths: --g-ch 64 gives G 1024 channels at 4x4 and 8x8 (16*ch, the wide top the anime seed
  preferred), halving to 128 at 64x64; --d-ch 64 gives D 64 channels at 64x64 up to 1024 at 4x4.

Usage
    python biggan.py --data ../shared/data/anime_hair          # 12 hair colours, 64x64
    python biggan.py --data ../shared/data/anime64             # unlabelled: one class embedding
    python biggan.py --data toy --res 32 --steps 200 --batch 32 --g-ch 8 --d-ch 8   # CPU smoke run
    python biggan.py --resume --steps 50000                    # continue out/biggan/ckpt.pt
    torchrun --nproc_per_node=4 biggan.py --data ./faces
    python biggan.py --sample out/biggan/ckpt.pt --n 144 --truncation 0.5 [--class blonde]
    python biggan.py --sample out/biggan/ckpt.pt --n 36 --truncation-sweep  # GIF, T from 2 to 0.1
"""

import argparse
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
from torch.nn.parallel import DistributedDataParallel as DDP

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

MODEL = "biggan"


# --- model --------------------------------------------------------------------------------------

# channel multipliers of ch per block: 128 and 256 as in appendix B (tables 4, 5); 64 and 32 (tests)
# follow the same pattern. G blocks double the resolution from 4x4; D blocks halve it down to 4x4,
# then one more block at 4x4
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


class SpectralNorm:
    """Mixin for a layer with .weight: use W / sigma(W), with sigma from one power-iteration step
    per training forward (Miyato et al. 2018). W is seen as (out, in*k*k); u persists as a buffer,
    so the estimate improves across steps and is checkpointed. eps 1e-6 as in the author's code."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)  # the layer's own __init__, next in the MRO
        self.register_buffer("u", F.normalize(torch.randn(self.weight.shape[0]), dim=0, eps=1e-6))

    def sn_weight(self):
        with torch.autocast(self.weight.device.type, enabled=False):  # power iteration in fp32
            W = self.weight.flatten(1)
            with torch.no_grad():
                v = F.normalize(W.t() @ self.u, dim=0, eps=1e-6)
                u = F.normalize(W @ v, dim=0, eps=1e-6)
                if self.training:
                    self.u.copy_(u)
            sigma = u @ W @ v  # gradient flows through W only, u and v are constants
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
        # SA-GAN's logits are plain dot products: no 1/sqrt(d) scaling. Under autocast the kernel
        # still forms them and their softmax in fp32; only q, k, v and its output are bf16
        h = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=1.0)[:, 0]
        return x + self.gamma * self.o(h.transpose(1, 2).reshape(B, -1, H, W))


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine; gain 1 + W_g c and bias W_b c from the conditioning vector
    c = [shared class embedding, z chunk] (sec. 3, appendix B)."""

    def __init__(self, c, cond_dim):
        super().__init__()
        self.bn = nn.BatchNorm2d(c, affine=False)
        self.gain = SNLinear(cond_dim, c, bias=False)
        self.bias = SNLinear(cond_dim, c, bias=False)

    def forward(self, x, cond):
        return (
            self.bn(x) * (1 + self.gain(cond))[:, :, None, None] + self.bias(cond)[:, :, None, None]
        )


class GBlock(nn.Module):
    """cBN-ReLU-up-conv3x3-cBN-ReLU-conv3x3, plus an upsampled 1x1-conv shortcut (appendix B fig. 15b)."""

    def __init__(self, c_in, c_out, cond_dim):
        super().__init__()
        self.bn1, self.bn2 = (
            ConditionalBatchNorm2d(c_in, cond_dim),
            ConditionalBatchNorm2d(c_out, cond_dim),
        )
        self.conv1 = SNConv2d(c_in, c_out, 3, padding=1)
        self.conv2 = SNConv2d(c_out, c_out, 3, padding=1)
        self.skip = SNConv2d(c_in, c_out, 1)

    def forward(self, x, cond):
        h = F.interpolate(F.relu(self.bn1(x, cond)), scale_factor=2)
        h = self.conv2(F.relu(self.bn2(self.conv1(h), cond)))
        return h + self.skip(F.interpolate(x, scale_factor=2))


class Generator(nn.Module):
    """(z (B, z_dim), y (B,)) -> image (B, 3, res, res). z_chunks[0] feeds the 4x4 input layer; each
    block's cBN sees [shared(y), its own chunk]; self-attention after the block at attn_res."""

    def __init__(self, res=64, z_dim=120, ch=64, n_classes=1, shared_dim=128, attn_res=None):
        super().__init__()
        self.res, self.z_dim = res, z_dim
        mults = G_CH[res]
        c_in, c_out = [ch * m for m in [16] + mults[:-1]], [ch * m for m in mults]
        self.z_sizes = z_chunks(z_dim, len(mults) + 1)
        self.shared = nn.Embedding(n_classes, shared_dim)
        self.linear = SNLinear(self.z_sizes[0], c_in[0] * 4 * 4)
        self.blocks = nn.ModuleList(
            GBlock(i, o, shared_dim + zc) for i, o, zc in zip(c_in, c_out, self.z_sizes[1:])
        )
        self.attn_at = (
            int(math.log2(attn_res)) - 3 if attn_res else None
        )  # block i outputs 8 * 2**i
        self.attn = SelfAttention(c_out[self.attn_at]) if attn_res else None
        self.out = nn.Sequential(
            nn.BatchNorm2d(c_out[-1]), nn.ReLU(), SNConv2d(c_out[-1], 3, 3, padding=1), nn.Tanh()
        )

    def conditions(self, z, y):
        """The input layer's chunk, and one cBN conditioning vector [shared(y), z chunk] per block."""
        zs = torch.split(z, self.z_sizes, dim=1)
        e = self.shared(y)
        return zs[0], [torch.cat([e, zc], 1) for zc in zs[1:]]

    def forward(self, z, y):
        z0, conds = self.conditions(z, y)
        h = self.linear(z0).view(len(z), -1, 4, 4)
        for i, (block, cond) in enumerate(zip(self.blocks, conds)):
            h = block(h, cond)
            if i == self.attn_at:
                h = self.attn(h)
        return self.out(h)


class DBlock(nn.Module):
    """(ReLU)-conv3x3-ReLU-conv3x3-avgpool, plus a 1x1-conv shortcut (appendix B fig. 15c). The first
    block skips the leading ReLU so the image is not clipped."""

    def __init__(self, c_in, c_out, down=True, preact=True):
        super().__init__()
        self.down, self.preact = down, preact
        self.conv1 = SNConv2d(c_in, c_out, 3, padding=1)
        self.conv2 = SNConv2d(c_out, c_out, 3, padding=1)
        self.skip = SNConv2d(c_in, c_out, 1) if c_in != c_out or down else None

    def forward(self, x):
        h = self.conv2(F.relu(self.conv1(F.relu(x) if self.preact else x)))
        if (
            self.down
        ):  # avg-pool and a 1x1 conv commute, so pooling the shortcut first is exact and cheaper
            h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
        return h + (self.skip(x) if self.skip is not None else x)


class Discriminator(nn.Module):
    """(image (B, 3, res, res), y (B,)) -> logit (B,): a linear head on sum-pooled ReLU features
    plus the projection term <embed(y), features>."""

    def __init__(self, res=64, ch=64, n_classes=1, attn_res=None):
        super().__init__()
        mults = D_CH[res]
        c = [3] + [ch * m for m in mults]
        self.blocks = nn.ModuleList(
            DBlock(c[i], c[i + 1], down=i < len(mults) - 1, preact=i > 0) for i in range(len(mults))
        )
        self.attn_at = (
            int(math.log2(res // attn_res)) - 1 if attn_res else None
        )  # block i outputs res / 2**(i+1)
        self.attn = SelfAttention(c[self.attn_at + 1]) if attn_res else None
        self.linear = SNLinear(c[-1], 1)
        self.embed = SNEmbedding(n_classes, c[-1])

    def forward(self, x, y):
        h = x
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == self.attn_at:
                h = self.attn(h)
        h = F.relu(h).sum((2, 3))  # (B, C): global sum pooling
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(1)


def init_weights(m):
    """Orthogonal init (Saxe et al. 2014) for every conv, linear and embedding (sec. 3)."""
    if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
        nn.init.orthogonal_(m.weight)


# --- losses -------------------------------------------------------------------------------------


def hinge_loss_d(logits_real, logits_fake):
    """Hinge loss (Lim & Ye 2017), as in SA-GAN: D gets no gradient from samples it already
    classifies beyond the margin, which keeps it from overfitting easy examples."""
    return F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean()


def hinge_loss_g(logits_fake):
    return -logits_fake.mean()


def ortho_penalty(G, beta):
    """beta * sum_W ||W W^T * (1 - I)||_F^2 over G's weights with W as (out, in*k*k) (sec. 3.1):
    filters are pushed apart in angle but their norms are left free. The shared class embedding is
    left out, as in the author's code. ||W W^T||_F = ||W^T W||_F, and diag(W W^T) holds the squared
    row norms, so the smaller Gram matrix suffices (the 4x4 input layer's W is 16384 x 24).
    In fp32 with autocast off wherever it is called, as the author's code (utils.py, ortho) runs it
    on the fp32 weights: the penalty is the difference of two large sums, and a bf16 Gram matrix
    keeps 8 significant bits per entry."""
    total = 0.0
    for name, p in G.named_parameters():
        if p.ndim < 2 or name.startswith("shared."):
            continue
        with torch.autocast(p.device.type, enabled=False):
            W = p.float().flatten(1)
            gram = W.t() @ W if W.shape[0] > W.shape[1] else W @ W.t()
            total = total + gram.square().sum() - W.square().sum(1).square().sum()
    return beta * total


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


def sample_z(n, z_dim, gen, truncation=None):
    """z ~ N(0, I); with truncation T, entries beyond |T| are redrawn until none are left."""
    z = torch.randn(n, z_dim, generator=gen)
    while truncation is not None and (bad := z.abs() > truncation).any():
        z[bad] = torch.randn(int(bad.sum()), generator=gen)
    return z


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
    """Checkpoint -> G_ema in eval mode, with .res, .z_dim and .classes for generate()."""
    ckpt = load_checkpoint(path, device)
    a = ckpt["args"]
    G = Generator(
        a["res"], a["z_dim"], a["g_ch"], len(ckpt["classes"]), a["shared_dim"], a["attn_res"]
    ).to(device)
    G.load_state_dict(ckpt["G_ema"])
    G.classes = ckpt["classes"]
    return G.eval().requires_grad_(False)


@torch.no_grad()
def generate(G, n, seed=0, truncation=None, y=None, batch=256):
    """n images in [-1, 1], (n, 3, res, res) float32 on the CPU; same seed, same images.
    y: class labels (n,) or one label for all; None cycles through the classes."""
    z = sample_z(n, G.z_dim, torch.Generator().manual_seed(seed), truncation)
    y = (
        torch.arange(n) % len(G.classes)
        if y is None
        else torch.as_tensor(y, dtype=torch.long).expand(n)
    )
    device = next(G.parameters()).device
    return torch.cat(
        [
            G(z[i : i + batch].to(device), y[i : i + batch].to(device)).float().cpu()
            for i in range(0, n, batch)
        ]
    )


@torch.no_grad()
def interpolation_frames(G, n, seed=0, truncation=None, y=None, keys=4, steps=16):
    """Frames of n images, each moving along a spherical path through `keys` latents and back;
    each image keeps its class y."""
    gen = torch.Generator().manual_seed(seed)
    zs = [sample_z(n, G.z_dim, gen, truncation) for _ in range(keys)]
    device, frames = next(G.parameters()).device, []
    y = (torch.arange(n) % len(G.classes) if y is None else y).to(device)
    for k in range(keys):
        a, b = zs[k], zs[(k + 1) % keys]
        omega = torch.arccos(
            (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1, keepdim=True).clamp(-1, 1)
        )
        for t in torch.linspace(0, 1, steps + 1)[:-1]:
            z = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(
                omega
            ).clamp_min(1e-6)
            frames.append(make_grid(G(z.to(device), y).float().cpu()))
    return frames


def truncation_frames(G, n, seed=0, y=None, t_max=2.0, t_min=0.1, steps=20):
    """The truncation trade-off (sec. 3.1, fig. 2a) as frames, T from t_max down to t_min and back.
    The same seed keeps every z entry inside |T|, so only the resampled ones change between frames."""
    ts = torch.linspace(t_max, t_min, steps).tolist()
    frames = [make_grid(generate(G, n, seed, t, y)) for t in ts]
    return frames + frames[-2:0:-1]


def class_index(classes, name):
    """--class accepts a class name (a data subfolder) or its index."""
    if name in classes:
        return classes.index(name)
    if name.isdigit() and int(name) < len(classes):
        return int(name)
    names = ", ".join(repr(c) for c in classes)
    raise UserError(
        f"--class {name!r} is neither a class name nor an index below {len(classes)} (classes: {names})"
    )


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


def train(args):
    args, ckpt = start_or_resume(args)
    check_res(args.res)
    args.attn_res = args.res // 2 if args.attn_res is None else args.attn_res
    if args.n_dis < 1:
        raise UserError(f"--n-dis {args.n_dis}: D needs at least one step per G step")
    if args.attn_res and args.attn_res not in [
        args.res >> k for k in range(1, len(G_CH[args.res]))
    ]:
        raise UserError(
            f"--attn-res {args.attn_res}: choose a power of two from 8 to {args.res // 2}, or 0 for none"
        )
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
    n_classes = len(data.classes)
    if n_classes == 1:
        say(
            f"{args.data} has one class: G and D train with a single class embedding (unconditional BigGAN)"
        )

    G = Generator(args.res, args.z_dim, args.g_ch, n_classes, args.shared_dim, args.attn_res).to(
        device
    )
    D = Discriminator(args.res, args.d_ch, n_classes, args.attn_res).to(device)
    G.apply(init_weights)
    D.apply(init_weights)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr_g, betas=(0.0, 0.999), eps=1e-6)
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=(0.0, 0.999), eps=1e-6)
    scaler_G = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    scaler_D = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
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
        step = ckpt["step"]
        set_rng_states(ckpt["rng"], rank, device)
        say(f"resuming {args.out}/ckpt.pt at step {step}/{args.steps}")
    layout = memory_format(device)  # channels_last on CUDA
    G, D, G_ema = (m.to(memory_format=layout) for m in (G, D, G_ema))
    G_train, D_train = (DDP(G), DDP(D)) if world > 1 else (G, D)
    if args.compile:
        G_train, D_train = torch.compile(G_train), torch.compile(D_train)
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    beta = ema_beta(args.batch, args.ema_kimg)
    rows = n_classes if n_classes > 1 else 8  # sample grids: one class per row, 8 samples each
    z_fixed = sample_z(rows * 8, args.z_dim, torch.Generator().manual_seed(args.seed)).to(device)
    y_fixed = (torch.arange(rows * 8) // 8 % n_classes).to(device)
    os.makedirs(os.path.join(args.out, "samples"), exist_ok=True)
    say(
        f"{MODEL} | {args.data}: {len(data.labels)} images, {n_classes} class(es), {args.res}x{args.res} | "
        f"G {sum(p.numel() for p in G.parameters()) / 1e6:.2f}M D {sum(p.numel() for p in D.parameters()) / 1e6:.2f}M "
        f"params | {device} {precision} | batch {args.batch} on {world} process(es) | out {args.out}"
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
            for _ in range(args.n_dis):  # n_dis D steps per G step, each on its own real batch
                x_real, y_real = next(batches)
                x_real = x_real.contiguous(memory_format=layout)
                B = x_real.shape[0]
                z = torch.randn(B, args.z_dim, device=device)
                y_fake = torch.randint(n_classes, (B,), device=device)
                with autocast:
                    with torch.no_grad():
                        x_fake = G_train(z, y_fake)
                    logits = D_train(
                        torch.cat([x_real, x_fake]), torch.cat([y_real, y_fake])
                    ).float()
                    logits_real, logits_fake = logits[:B], logits[B:]
                    loss_D = hinge_loss_d(logits_real, logits_fake)
                opt_D.zero_grad(set_to_none=True)
                scaler_D.scale(loss_D).backward()
                scaler_D.step(opt_D)
                scaler_D.update()

            z = torch.randn(B, args.z_dim, device=device)
            y_fake = torch.randint(n_classes, (B,), device=device)
            with autocast:
                loss_G = hinge_loss_g(D_train(G_train(z, y_fake), y_fake).float())
            loss_ortho = ortho_penalty(G, args.ortho_beta)
            opt_G.zero_grad(set_to_none=True)
            scaler_G.scale(loss_G + loss_ortho).backward()
            scaler_G.step(opt_G)
            scaler_G.update()
            update_ema(
                G_ema, G, beta if step >= args.ema_start else 0.0
            )  # G_ema = G until --ema-start
            step += 1
            meter.add(
                loss_D=loss_D,
                loss_G=loss_G,
                d_real=logits_real.mean(),
                d_fake=logits_fake.mean(),
                ortho=loss_ortho,
            )

            if step % args.log_every == 0 or step == args.steps:
                fail_if_not_finite()
                dt, rec = (
                    time.time() - t_log,
                    {"step": step, "steps": args.steps, "kimg": step * args.batch / 1000},
                )
                rec.update(meter.means())
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
    folder, tag = os.path.dirname(args.sample) or ".", f"seed{args.seed}"
    nrow = math.ceil(math.sqrt(args.n))
    if args.cls is not None:
        c = class_index(G.classes, args.cls)
        y, tag = torch.full((args.n,), c), tag + f"_class{c}"
    else:
        y = torch.arange(args.n) // nrow % len(G.classes)  # one class per row of the grid
    if args.truncation is not None:
        tag += f"_trunc{args.truncation:g}"
    if args.interp:
        path = save_gif(
            interpolation_frames(G, args.n, args.seed, args.truncation, y),
            os.path.join(folder, f"interp_{tag}.gif"),
        )
    elif args.truncation_sweep:
        path = save_gif(
            truncation_frames(G, args.n, args.seed, y),
            os.path.join(folder, f"truncation_{tag}.gif"),
        )
    else:
        path = save_grid(
            generate(G, args.n, args.seed, args.truncation, y),
            os.path.join(folder, f"samples_{tag}.png"),
            nrow=nrow,
        )
    print(path)


# --- command line -------------------------------------------------------------------------------


def get_args(argv=None):
    p = argparse.ArgumentParser(
        description="BigGAN (Brock et al. 2018) for anime faces.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--data", default="toy", help="image folder (subfolders = classes), .zip, or 'toy'"
    )
    p.add_argument("--res", type=int, default=64, help="image resolution: 32, 64, 128 or 256")
    p.add_argument("--out", default=f"out/{MODEL}", help="run folder: ckpt.pt, log.jsonl, samples/")
    p.add_argument(
        "--steps", type=positive_int, default=50000, help="generator updates to train for"
    )
    p.add_argument(
        "--batch", type=positive_int, default=64, help="global batch, split across processes"
    )
    p.add_argument("--lr-g", type=float, default=1e-4, help="generator Adam learning rate")
    p.add_argument("--lr-d", type=float, default=4e-4, help="discriminator Adam learning rate")
    p.add_argument(
        "--ema-kimg",
        type=float,
        default=444.0,
        help="G_ema half-life in thousands of images (444 = decay 0.9999 per step at batch 64)",
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
        help="sampling mode: number of images (square grid, a class per row)",
    )
    p.add_argument(
        "--truncation",
        type=positive_float,
        default=None,
        help="redraw z entries beyond |T| (sampling)",
    )
    p.add_argument(
        "--interp", action="store_true", help="sampling mode: latent-interpolation GIF instead"
    )
    p.add_argument(
        "--truncation-sweep",
        action="store_true",
        help="sampling mode: GIF of the same z as the truncation T goes from 2 to 0.1 and back",
    )
    p.add_argument(
        "--class", dest="cls", metavar="NAME_OR_INDEX", help="sampling mode: only this class"
    )
    p.add_argument(
        "--z-dim", type=int, default=120, help="latent size, split into one chunk per G block + 1"
    )
    p.add_argument("--shared-dim", type=int, default=128, help="size of G's shared class embedding")
    p.add_argument(
        "--g-ch",
        type=int,
        default=64,
        help="G width multiplier: 16*ch channels at 4x4, 2*ch at 64x64",
    )
    p.add_argument(
        "--d-ch",
        type=int,
        default=64,
        help="D width multiplier: ch channels at 64x64, 16*ch at 4x4",
    )
    p.add_argument(
        "--attn-res",
        type=int,
        default=None,
        help="self-attention at this map size in G and D; "
        "unset: res/2 (32 for 64x64, 64 for 128x128); 0: none",
    )
    p.add_argument("--n-dis", type=int, default=2, help="D steps per G step (the paper's 2)")
    p.add_argument(
        "--ortho-beta", type=float, default=1e-4, help="orthogonal regularisation strength beta"
    )
    p.add_argument(
        "--ema-start",
        type=int,
        default=20000,
        help="G steps before G_ema starts averaging (a copy of G until then)",
    )
    return parse_args(p, argv)


if __name__ == "__main__":
    args = get_args()
    try:
        sample(args) if args.sample else train(args)
    except UserError as e:
        sys.exit(f"{MODEL}: error: {e}")
