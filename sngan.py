"""SNGAN: "Spectral Normalization for Generative Adversarial Networks", Takeru Miyato, Toshiki
Kataoka, Masanori Koyama, Yuichi Yoshida, 2018. arXiv:1802.05957. ResNet version, tuned for anime faces.

Paper -> code
- spectral normalisation: every D weight is divided by its largest singular value sigma(W),
  so each layer is 1-Lipschitz (sec. 2.1)                                         -> sn_weight
- sigma(W) from one power iteration per training forward, the left singular vector u kept
  between steps (sec. 2.2, Algorithm 1); the gradient flows through sigma too (sec. 2.3) -> sn_weight
- reparameterisation with a learned scalar: W_bar = gamma * W / sigma(W) (Appendix E) -> add_spectral_norm
- ResNet G (BatchNorm, ReLU, nearest upsampling, 3x3 convs) and D (ReLU, no normalisation
  layers, global sum pooling, linear output), Glorot-uniform init (Appendix B)       -> GBlock, DBlock
- hinge loss (sec. 4, Lim & Ye 2017)                                              -> hinge_loss_d, hinge_loss_g
- Adam with beta1 0, beta2 0.9, as in the paper's ResNet runs (Appendix B)          -> train()

Not from the paper
- n_dis = 1 (the paper's ResNet runs used 5 D steps per G step) with TTUR (Heusel et al. 2017):
  D's lr 4e-4 is 4x G's 1e-4 to keep D ahead, the trade SAGAN made.
- D downsamples with stride-2 convs (4x4 in the residual branch, 2x2 on the shortcut) instead
  of conv-then-average-pooling; G's last layer (before tanh) is a 1x1 conv to RGB.
- z ~ N(0, I) of size 128 (the paper's). Widths: G halves its channels at each doubling from
  8 * g_ch at 4x4 to g_ch at the output, D doubles from d_ch to 8 * d_ch; --g-ch/--d-ch 64 as DCGAN.
- An exponential moving average of G's weights (G_ema, half-life --ema-kimg); all samples come
  from it. bf16 autocast on CUDA (sigma always in fp32), DDP, checkpoints: the shared skeleton.
- Sampling GIFs: --walk (a random walk in z), --interp (slerp through fixed latents),
  --truncation-sweep (latent std 0.3 -> 3, cubically spaced).

Usage
    python sngan.py                                   # built-in toy faces, 64x64
    python sngan.py --data ./faces --res 64           # any folder or .zip of images
    python sngan.py --data toy --res 32 --steps 200 --batch 32 --g-ch 16 --d-ch 16   # CPU smoke run
    python sngan.py --resume --steps 30000            # continue out/sngan/ckpt.pt
    torchrun --nproc_per_node=4 sngan.py --data ./faces
    python sngan.py --sample out/sngan/ckpt.pt --n 64 [--walk | --interp | --truncation-sweep]
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

MODEL = "sngan"


# --- model --------------------------------------------------------------------------------------


def check_res(res):
    if res < 32 or res & (res - 1):
        raise UserError(f"{MODEL} builds power-of-two resolutions from 32 up; got --res {res}")


def sn_weight(layer):
    """gamma * W / sigma(W) for a layer with .weight, .gamma and the buffer .u (sec. 2.2, Algorithm 1).

    A conv weight (out, in, kh, kw) is treated as the matrix (out, in*kh*kw), as in the paper. In
    training mode one power iteration refines u in place; in eval mode u is only read, so the same
    (W, u) give the same sigma in both modes. u and v are constants for autograd: d sigma / dW is
    then u v^T (sec. 2.3), and W's gradient gains the term that makes W / sigma scale-free."""
    W = layer.weight.reshape(layer.weight.shape[0], -1)  # (out, in*kh*kw)
    with torch.autocast(
        W.device.type, enabled=False
    ):  # bf16 keeps 8 significant bits: sigma in fp32
        with torch.no_grad():
            if layer.training:
                layer.u.copy_(F.normalize(W @ F.normalize(W.t() @ layer.u, dim=0), dim=0))
            v = F.normalize(W.t() @ layer.u, dim=0)
        # a copy: the next forward (D runs on real, then fake, before backward) and DDP's buffer
        # broadcast both overwrite the buffer in place, which would invalidate this graph
        sigma = torch.dot(layer.u.clone(), W @ v)
        return layer.weight * (layer.gamma / sigma)


def add_spectral_norm(layer):
    layer.gamma = nn.Parameter(torch.ones(()))
    layer.register_buffer(
        "u", F.normalize(torch.randn(layer.weight.shape[0]), dim=0)
    )  # in state_dict: resumes exactly


class SNConv2d(nn.Conv2d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        add_spectral_norm(self)

    def forward(self, x):
        return self._conv_forward(x, sn_weight(self), self.bias)


class SNLinear(nn.Linear):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        add_spectral_norm(self)

    def forward(self, x):
        return F.linear(x, sn_weight(self), self.bias)


def glorot(layer, gain=1.0):
    """Glorot-uniform weights, zero bias; gain sqrt(2) inside residual branches, 1 elsewhere,
    as in the authors' Chainer code."""
    nn.init.xavier_uniform_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class GBlock(nn.Module):
    """x -> BN-ReLU-up2-conv3x3-BN-ReLU-conv3x3, plus up2-conv1x1(x): doubles the resolution."""

    def __init__(self, cin, cout):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), glorot(nn.Conv2d(cin, cout, 3, 1, 1), 2**0.5)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), glorot(nn.Conv2d(cout, cout, 3, 1, 1), 2**0.5)
        self.skip = glorot(nn.Conv2d(cin, cout, 1))

    def forward(self, x):
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
        self.conv2 = glorot(
            SNConv2d(cout, cout, 4, 2, 1) if down else SNConv2d(cout, cout, 3, 1, 1), 2**0.5
        )
        self.skip = (
            glorot(SNConv2d(cin, cout, 2, 2, 0))
            if down
            else glorot(SNConv2d(cin, cout, 1))
            if cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        h = self.conv1(x if self.first else F.relu(x))
        return self.conv2(F.relu(h)) + self.skip(x)


class Generator(nn.Module):
    """z (B, z_dim) -> image (B, 3, res, res): linear to 4x4, one GBlock per doubling, BN-ReLU,
    a 1x1 conv to RGB and tanh. Channels: 8*ch at 4x4, halving per doubling, never below ch."""

    def __init__(self, res=64, z_dim=128, ch=64):
        super().__init__()
        self.res, self.z_dim = res, z_dim
        n_up = int(math.log2(res)) - 2  # 4x4 -> res
        chs = [
            ch * min(2 ** (n_up - i), 8) for i in range(n_up + 1)
        ]  # 64x64, ch 64: 512 512 256 128 64
        self.c0 = chs[0]
        self.linear = glorot(nn.Linear(z_dim, 4 * 4 * chs[0]))
        self.blocks = nn.Sequential(*[GBlock(a, b) for a, b in zip(chs, chs[1:])])
        self.out = nn.Sequential(
            nn.BatchNorm2d(chs[-1]), nn.ReLU(), glorot(nn.Conv2d(chs[-1], 3, 1)), nn.Tanh()
        )

    def forward(self, z):
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

    def forward(self, x):
        h = F.relu(self.blocks(x)).sum((2, 3))  # (B, C): global sum pooling
        return self.linear(h).flatten()

    def gammas(self):
        return torch.stack([m.gamma for m in self.modules() if isinstance(m, (SNConv2d, SNLinear))])


# --- losses -------------------------------------------------------------------------------------


def hinge_loss_d(logits_real, logits_fake):
    """Hinge loss (Lim & Ye 2017), as in SNGAN: D gets no gradient from samples it already
    classifies beyond the margin of 1, which keeps it from overfitting easy examples."""
    return F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean()


def hinge_loss_g(logits_fake):
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
    G = Generator(a["res"], a["z_dim"], a["g_ch"]).to(device)
    G.load_state_dict(ckpt["G_ema"])
    G.classes = ckpt["classes"]
    return G.eval().requires_grad_(False)


@torch.no_grad()
def generate(G, n, seed=0, truncation=None, y=None, batch=256):
    """n images in [-1, 1], (n, 3, res, res) float32 on the CPU; same seed, same images.
    y (class labels) is accepted for a common signature and ignored: SNGAN here is unconditional."""
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


@torch.no_grad()
def walk_frames(G, n, seed=0, truncation=None, steps=64, step_size=0.15):
    """Frames of n images, each z on its own random walk z <- sqrt(1 - s^2) z + s * eps: every
    frame's z is still N(0, I), so the walk wanders through the prior without drifting off it."""
    gen = torch.Generator().manual_seed(seed)
    z = sample_z(n, G.z_dim, gen, truncation)
    device, frames = next(G.parameters()).device, []
    for _ in range(steps):
        frames.append(make_grid(G(z.to(device)).float().cpu()))
        z = math.sqrt(1 - step_size**2) * z + step_size * sample_z(n, G.z_dim, gen, truncation)
    return frames


@torch.no_grad()
def truncation_sweep_frames(G, n, seed=0, truncation=None, lo=0.3, hi=3.0, steps=32):
    """Frames of the same n latents scaled to std lo..hi and back. Cubic spacing puts most frames
    at std <= 1 (2/3 of them), where G was trained, and fewer in the tail where images break up."""
    z = sample_z(n, G.z_dim, torch.Generator().manual_seed(seed), truncation)
    stds = [lo + (hi - lo) * t**3 for t in torch.linspace(0, 1, steps).tolist()]
    device = next(G.parameters()).device
    frames = [make_grid(G((s * z).to(device)).float().cpu()) for s in stds]
    return frames + frames[-2:0:-1]


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

    G = Generator(args.res, args.z_dim, args.g_ch).to(device)
    D = Discriminator(args.res, args.d_ch).to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr_g, betas=(0.0, 0.9))
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
            z = torch.randn(x_real.shape[0], args.z_dim, device=device)
            with autocast:
                x_fake = G_train(z)
                logits_real, logits_fake = D_train(x_real), D_train(x_fake.detach())
                loss_D = hinge_loss_d(logits_real.float(), logits_fake.float())
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
                gamma=D.gammas().mean(),
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
    if args.walk + args.interp + args.truncation_sweep > 1:
        raise UserError("choose one of --walk, --interp, --truncation-sweep")
    device, _, _ = setup_device(args.device)
    G = load_generator(args.sample, device)
    folder, tag = os.path.dirname(args.sample) or ".", f"seed{args.seed}"
    if args.walk:
        path = save_gif(
            walk_frames(G, args.n, args.seed, args.truncation),
            os.path.join(folder, f"walk_{tag}.gif"),
        )
    elif args.interp:
        path = save_gif(
            interpolation_frames(G, args.n, args.seed, args.truncation),
            os.path.join(folder, f"interp_{tag}.gif"),
        )
    elif args.truncation_sweep:
        path = save_gif(
            truncation_sweep_frames(G, args.n, args.seed, args.truncation),
            os.path.join(folder, f"truncation_sweep_{tag}.gif"),
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
        description="SNGAN (Miyato et al. 2018), ResNet version, for anime faces.",
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
    p.add_argument("--lr-g", type=float, default=1e-4, help="generator Adam learning rate")
    p.add_argument(
        "--lr-d",
        type=float,
        default=4e-4,
        help="discriminator Adam learning rate (TTUR: above G's)",
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
        help="redraw z entries beyond |T| (sampling)",
    )
    p.add_argument(
        "--interp", action="store_true", help="sampling mode: latent-interpolation GIF instead"
    )
    p.add_argument("--walk", action="store_true", help="sampling mode: GIF of a random walk in z")
    p.add_argument(
        "--truncation-sweep",
        action="store_true",
        help="sampling mode: GIF of fixed latents scaled from std 0.3 to 3, cubically spaced",
    )
    p.add_argument("--z-dim", type=int, default=128, help="latent size (the paper's 128)")
    p.add_argument(
        "--g-ch", type=int, default=64, help="G width: channels of the last block (8x at 4x4)"
    )
    p.add_argument(
        "--d-ch", type=int, default=64, help="D width: channels of the first block (8x at 4x4)"
    )
    return parse_args(p, argv)


if __name__ == "__main__":
    args = get_args()
    try:
        sample(args) if args.sample else train(args)
    except UserError as e:
        sys.exit(f"{MODEL}: error: {e}")
