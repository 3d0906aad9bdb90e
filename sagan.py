"""SAGAN: "Self-Attention Generative Adversarial Networks", Han Zhang, Ian Goodfellow, Dimitris
Metaxas, Augustus Odena, 2018. arXiv:1805.08318. Spectral normalisation from "Spectral
Normalization for Generative Adversarial Networks", Miyato et al. 2018, arXiv:1802.05957.

Paper -> code
- self-attention block: 1x1 convs f (key), g (query), h (value) to C/8 channels, a softmax over
  all positions, a 1x1 conv v back to C, output gamma * o + x with a learned gamma that starts
  at 0 (sec. 3, eqs. 1-3)                                            -> SelfAttention
- attention in G and in D, at the 32x32 feature maps for 64x64 images (sec. 5.1 found the
  larger maps best)                                                  -> Generator, Discriminator
- spectral normalisation on every layer of G and D, one power iteration per training forward,
  u and v kept as buffers (sec. 4; Miyato et al. Algorithm 1)        -> SpectralNorm, SNConv2d,
                                                                        SNConvTranspose2d
- hinge loss (sec. 3, eq. 4)                                         -> hinge_loss_d, hinge_loss_g
- TTUR: lr 1e-4 for G, 4e-4 for D, one D step per G step, Adam betas (0, 0.9) (sec. 4, 5) -> train()

Not from the paper (the anime seed's choices)
- A DCGAN-shaped G and D (as dcgan.py, widths 64) with SN instead of the paper's ResNet blocks;
  BatchNorm stays in G (the paper used conditional BatchNorm; this model is unconditional).
  G upsamples with ConvTranspose2d by default: the seed found nearest upsampling + 3x3 conv
  lost diversity; `--upsample nearest` keeps that alternative.
- z ~ N(0, 0.5^2 I) truncated to [-1, 1], for training and for samples (the seed's finding).
- Attention is computed with F.scaled_dot_product_attention(scale=1) (eq. 1 has no 1/sqrt(d));
  on a GPU it picks a flash / memory-efficient kernel, so the (B, N, N) attention matrix is
  never stored. The official release differs from the paper in the block: h has C/2 channels
  and keys/values are 2x2 max-pooled; here the block follows the paper.
- D sees real and fake images in one forward, so both are scored with the same sigma (each
  training forward moves u). D's LeakyReLU slope is 0.1 (Miyato et al.'s CNN); weights N(0, 0.02).
- An exponential moving average of G's weights (G_ema, half-life --ema-kimg); all samples come
  from it. bf16 autocast on CUDA, DDP, checkpoints: the skeleton shared by every file here.
  Each attention gamma is logged (gamma_G, gamma_D): reference code was criticised for a
  gamma that never moves.

Usage
    python sagan.py                                   # built-in toy faces, 64x64
    python sagan.py --data ./faces --res 64           # any folder or .zip of images
    python sagan.py --data toy --res 32 --steps 200 --batch 32 --g-ch 16 --d-ch 16   # CPU smoke run
    python sagan.py --resume --steps 30000            # continue out/sagan/ckpt.pt
    torchrun --nproc_per_node=4 sagan.py --data ./faces
    python sagan.py --sample out/sagan/ckpt.pt --n 64 [--interp]
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

MODEL = "sagan"
Z_STD, Z_BOUND = 0.5, 1.0  # z ~ N(0, Z_STD^2) truncated to [-Z_BOUND, Z_BOUND] (the seed's finding)


# --- model --------------------------------------------------------------------------------------


def check_res(res, attn_res=None):
    if res < 32 or res & (res - 1):
        raise UserError(f"{MODEL} builds power-of-two resolutions from 32 up; got --res {res}")
    sizes = [2**k for k in range(2, int(math.log2(res)))]
    if attn_res is not None and attn_res not in sizes:
        raise UserError(
            f"--attn-res must be a hidden feature-map size, one of {sizes}; got {attn_res}"
        )


class SpectralNorm(nn.Module):
    """W (rows, cols) -> W / sigma(W), sigma the largest singular value estimated by power
    iteration (Miyato et al. 2018, Algorithm 1). One iteration per training forward: W changes
    little per step, so u and v, kept as buffers, stay close to the top singular vectors."""

    def __init__(self, rows, cols):
        super().__init__()
        self.register_buffer("u", F.normalize(torch.randn(rows), dim=0))
        self.register_buffer("v", F.normalize(torch.randn(cols), dim=0))

    def forward(self, W):
        with torch.autocast(W.device.type, enabled=False):  # a bf16 sigma would be off by ~1%
            W = W.float()
            if self.training:
                with torch.no_grad():
                    self.v.copy_(F.normalize(torch.mv(W.t(), self.u), dim=0))
                    self.u.copy_(F.normalize(torch.mv(W, self.v), dim=0))
            # u and v are constants here, so the gradient reaches W through sigma = u^T W v too.
            # Copies: the next training forward (D on real, then fake, before one backward)
            # overwrites the buffers in place, which would invalidate this graph
            sigma = torch.dot(self.u.clone(), torch.mv(W, self.v.clone()))
            return W / sigma


class SNConv2d(nn.Conv2d):
    """Conv2d with a spectrally normalised weight, seen as a (out, in * kh * kw) matrix."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sn = SpectralNorm(self.weight.shape[0], self.weight[0].numel())

    def forward(self, x):
        return self._conv_forward(
            x, self.sn(self.weight.flatten(1)).view_as(self.weight), self.bias
        )


class SNConvTranspose2d(nn.ConvTranspose2d):
    """ConvTranspose2d with a spectrally normalised weight. Its weight is (in, out, kh, kw); the
    matrix is (out, in * kh * kw), output channels as rows as for Conv2d (and torch's spectral_norm)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sn = SpectralNorm(self.weight.shape[1], self.weight[:, 0].numel())

    def forward(self, x):
        W = self.weight.transpose(0, 1)
        W = self.sn(W.flatten(1)).view_as(W).transpose(0, 1)
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

    def qkv(self, x):
        return [
            m(x).flatten(2).transpose(1, 2)[:, None] for m in (self.query, self.key, self.value)
        ]  # (B, 1, N, C/8)

    def attention_map(self, x):
        """beta (B, N, N) of eq. 1: row j is how much output position j takes from each position i.
        Logits and softmax in fp32 under any autocast, as scaled_dot_product_attention computes them
        inside forward (and the SAGAN code, fp32 throughout): eq. 1 has no 1/sqrt(d), so the logits
        are large and the softmax exponentiates a bf16 logit's rounding error."""
        q, k, _ = self.qkv(x)
        with torch.autocast(x.device.type, enabled=False):
            return torch.softmax(q[:, 0].float() @ k[:, 0].float().transpose(1, 2), dim=-1)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(x)
        o = F.scaled_dot_product_attention(
            q, k, v, scale=1.0
        )  # (B, 1, N, C/8); eq. 1 has no 1/sqrt(d)
        return x + self.gamma * self.out(o[:, 0].transpose(1, 2).reshape(B, -1, H, W))


def upsample_conv(c_in, c_out, mode):
    """x2 upsampling: a stride-2 transposed conv (the seed's default), or nearest + 3x3 conv."""
    if mode == "nearest":
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), SNConv2d(c_in, c_out, 3, 1, 1, bias=False)
        )
    return SNConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)


class Generator(nn.Module):
    """z (B, z_dim) -> image (B, 3, res, res). Channels halve as the resolution doubles; self-attention
    after the attn_res x attn_res block (default res / 2: 32x32 for 64x64 images)."""

    def __init__(self, res=64, z_dim=128, ch=64, attn_res=None, upsample="convtranspose"):
        super().__init__()
        self.res, self.z_dim = res, z_dim
        attn_res = attn_res or res // 2
        n_up = int(math.log2(res)) - 2  # 4x4 -> res
        c, r = min(ch * 2 ** (n_up - 1), ch * 16), 4
        layers = [
            SNConvTranspose2d(z_dim, c, 4, 1, 0, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(True),
        ]
        for _ in range(n_up - 1):
            layers += [SelfAttention(c)] if r == attn_res else []
            layers += [upsample_conv(c, c // 2, upsample), nn.BatchNorm2d(c // 2), nn.ReLU(True)]
            c, r = c // 2, r * 2
        layers += [SelfAttention(c)] if r == attn_res else []
        layers += [upsample_conv(c, 3, upsample), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    """image (B, 3, res, res) -> logit (B,). Self-attention after the attn_res x attn_res layer
    (default res / 2). No BatchNorm: spectral norm alone constrains D."""

    def __init__(self, res=64, ch=64, attn_res=None):
        super().__init__()
        attn_res = attn_res or res // 2
        n_down = int(math.log2(res)) - 2  # res -> 4x4
        layers = [SNConv2d(3, ch, 4, 2, 1), nn.LeakyReLU(0.1, True)]
        c, r = ch, res // 2
        for _ in range(n_down - 1):
            layers += [SelfAttention(c)] if r == attn_res else []
            c2 = min(c * 2, ch * 16)
            layers += [SNConv2d(c, c2, 4, 2, 1), nn.LeakyReLU(0.1, True)]
            c, r = c2, r // 2
        layers += [SelfAttention(c)] if r == attn_res else []
        layers += [SNConv2d(c, 1, 4, 1, 0)]
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
    return next(m for m in model.modules() if isinstance(m, SelfAttention)).gamma


# --- losses -------------------------------------------------------------------------------------


def hinge_loss_d(logits_real, logits_fake):
    """hinge loss (Lim & Ye 2017), as in SNGAN/SAGAN: D gets no gradient from samples it already
    classifies beyond the margin, which keeps it from overfitting easy examples."""
    return F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean()


def hinge_loss_g(logits_fake):
    """G raises D's score of its samples, without a margin (sec. 3, eq. 4)."""
    return -logits_fake.mean()


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


def sample_z(n, z_dim, gen=None, truncation=None, device="cpu"):
    """z ~ N(0, Z_STD^2 I) truncated to [-Z_BOUND, Z_BOUND] (training and samples); --truncation T
    moves the bound to [-T, T]. Drawn by inverse CDF, so no redraw loop syncs the GPU."""
    bound = Z_BOUND if truncation is None else truncation
    return nn.init.trunc_normal_(
        torch.empty(n, z_dim, device=device), 0.0, Z_STD, -bound, bound, generator=gen
    )


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
    G = Generator(a["res"], a["z_dim"], a["g_ch"], a["attn_res"], a["upsample"]).to(device)
    G.load_state_dict(ckpt["G_ema"])
    G.classes = ckpt["classes"]
    return G.eval().requires_grad_(False)


@torch.no_grad()
def generate(G, n, seed=0, truncation=None, y=None, batch=256):
    """n images in [-1, 1], (n, 3, res, res) float32 on the CPU; same seed, same images.
    y (class labels) is accepted for a common signature and ignored: this SAGAN is unconditional."""
    z = sample_z(n, G.z_dim, torch.Generator().manual_seed(seed), truncation)
    device = next(G.parameters()).device
    return torch.cat([G(z[i : i + batch].to(device)).float().cpu() for i in range(0, n, batch)])


@torch.no_grad()
def interpolation_frames(G, n, seed=0, truncation=None, keys=4, steps=16):
    """Frames of n images, each moving along a spherical path through `keys` latents and back."""
    gen = torch.Generator().manual_seed(seed)
    zs = [sample_z(n, G.z_dim, gen, truncation) for _ in range(keys)]
    device, frames = next(G.parameters()).device, []
    for k in range(keys):
        a, b = zs[k], zs[(k + 1) % keys]
        omega = torch.arccos(
            (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1, keepdim=True).clamp(-1, 1)
        )
        for t in torch.linspace(0, 1, steps + 1)[:-1]:
            z = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(
                omega
            ).clamp_min(1e-6)
            frames.append(make_grid(G(z.to(device)).float().cpu()))
    return frames


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
    check_res(args.res, args.attn_res)
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

    G = Generator(args.res, args.z_dim, args.g_ch, args.attn_res, args.upsample).to(device)
    D = Discriminator(args.res, args.d_ch, args.attn_res).to(device)
    G.apply(init_weights)
    D.apply(init_weights)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_G = torch.optim.Adam(
        G.parameters(), lr=args.lr_g, betas=(0.0, 0.9)
    )  # sec. 5: TTUR, beta1 = 0
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=(0.0, 0.9))
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
    z_fixed = sample_z(64, args.z_dim, torch.Generator().manual_seed(args.seed)).to(device)
    os.makedirs(os.path.join(args.out, "samples"), exist_ok=True)
    say(
        f"{MODEL} | {args.data}: {len(data.labels)} images, {args.res}x{args.res} | "
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
            x_real, _ = next(batches)
            x_real = x_real.contiguous(memory_format=layout)
            z = sample_z(x_real.shape[0], args.z_dim, device=device)
            with autocast:
                x_fake = G_train(z)
                logits_real, logits_fake = (
                    D_train(torch.cat([x_real, x_fake.detach()])).float().chunk(2)
                )
                loss_D = hinge_loss_d(logits_real, logits_fake)
            opt_D.zero_grad(set_to_none=True)
            scaler_D.scale(loss_D).backward()
            scaler_D.step(opt_D)
            scaler_D.update()

            with autocast:
                loss_G = hinge_loss_g(D_train(x_fake).float())
            opt_G.zero_grad(set_to_none=True)
            scaler_G.scale(loss_G).backward()
            scaler_G.step(opt_G)
            scaler_G.update()
            # the half-life ramps up to --ema-kimg over the first 20x as many images (StyleGAN2-ADA's
            # ema_rampup 0.05), so that early samples are not dominated by the initial weights
            update_ema(
                G_ema, G, ema_beta(args.batch, min(args.ema_kimg, 0.05 * step * args.batch / 1000))
            )
            step += 1
            meter.add(
                loss_D=loss_D,
                loss_G=loss_G,
                d_real=logits_real.mean(),
                d_fake=logits_fake.mean(),
                gamma_G=attention_gamma(G),
                gamma_D=attention_gamma(D),
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
                        G_ema(z_fixed),
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
    if args.interp:
        path = save_gif(
            interpolation_frames(G, args.n, args.seed, args.truncation),
            os.path.join(folder, f"interp_{tag}.gif"),
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
        description="SAGAN (Zhang et al. 2018) for anime faces.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--data", default="toy", help="image folder (subfolders = classes), .zip, or 'toy'"
    )
    p.add_argument("--res", type=int, default=64, help="image resolution (power of two, >= 32)")
    p.add_argument("--out", default=f"out/{MODEL}", help="run folder: ckpt.pt, log.jsonl, samples/")
    p.add_argument(
        "--steps", type=positive_int, default=30000, help="generator updates to train for"
    )
    p.add_argument(
        "--batch", type=positive_int, default=64, help="global batch, split across processes"
    )
    p.add_argument(
        "--lr-g", type=float, default=1e-4, help="generator Adam learning rate (TTUR, sec. 4.2)"
    )
    p.add_argument(
        "--lr-d", type=float, default=4e-4, help="discriminator Adam learning rate (TTUR, sec. 4.2)"
    )
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
    p.add_argument("--n", type=positive_int, default=64, help="sampling mode: number of images")
    p.add_argument(
        "--truncation",
        type=positive_float,
        default=None,
        help="sampling: truncate z to [-T, T] instead of the training range [-1, 1]",
    )
    p.add_argument(
        "--interp", action="store_true", help="sampling mode: latent-interpolation GIF instead"
    )
    p.add_argument(
        "--z-dim",
        type=int,
        default=128,
        help="latent size (128, as in the CNNs of Miyato et al. 2018)",
    )
    p.add_argument(
        "--g-ch", type=int, default=64, help="G width: channels of the last hidden layer"
    )
    p.add_argument("--d-ch", type=int, default=64, help="D width: channels of the first layer")
    p.add_argument(
        "--attn-res",
        type=int,
        default=None,
        help="feature-map size of the self-attention block in G and D (default res/2: 32 at 64x64)",
    )
    p.add_argument(
        "--upsample",
        default="convtranspose",
        choices=["convtranspose", "nearest"],
        help="G's x2 upsampling: stride-2 transposed conv (the seed's choice) or nearest + 3x3 conv",
    )
    return parse_args(p, argv)


if __name__ == "__main__":
    args = get_args()
    try:
        sample(args) if args.sample else train(args)
    except UserError as e:
        sys.exit(f"{MODEL}: error: {e}")
