"""CPU precision x memory layout, per model: which of fp32/bf16 x NCHW/channels_last trains fastest.

Each model's G and D at its default widths (from its own get_args) take one D+G step (D on real
and on fake images, then G through D; the non-saturating loss, Adam) in each of the four
configurations, built as copies of the same weights. The configurations are interleaved (each
repetition times every one once), so a machine whose load changes affects all four alike; the
figure is the median of --reps after 2 warm-up repetitions, and the ratio is against fp32 NCHW.
What the model files' CPU_CHANNELS_LAST says came from this script (see the README's CPU table).

Usage
    python bench_layout.py                                   # all seven, 64x64, batch 64
    python bench_layout.py --models sngan,sagan --batch 16 --reps 3
"""

import argparse
import copy
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def build(name, res):
    m = __import__(name)
    a = m.get_args(["--res", str(res)])
    if name in ("dcgan", "wgan", "sngan"):
        return m, m.Generator(res, a.z_dim, a.g_ch), m.Discriminator(res, a.d_ch), a.z_dim, 0
    if name == "cgan":
        return (
            m,
            m.Generator(res, a.z_dim, a.g_ch, 4, a.embed_dim, a.slope),
            m.Discriminator(res, a.d_ch, 4, a.slope),
            a.z_dim,
            4,
        )
    if name == "sagan":
        return (
            m,
            m.Generator(res, a.z_dim, a.g_ch, a.attn_res, a.upsample),
            m.Discriminator(res, a.d_ch, a.attn_res),
            a.z_dim,
            0,
        )
    if name == "biggan":
        return (
            m,
            m.Generator(res, a.z_dim, a.g_ch, 4, a.shared_dim, a.attn_res),
            m.Discriminator(res, a.d_ch, 4, a.attn_res),
            a.z_dim,
            4,
        )
    a = m.auto_config(a)
    G = m.Generator(res, a.z_dim, a.w_dim, 0, a.cbase, a.cmax, a.map_layers)
    D = m.Discriminator(res, 0, a.cbase, a.cmax, mbstd_group=a.mbstd_group)
    return m, G, D, a.z_dim, 0


def step(G, D, optG, optD, z_dim, nc, B, res, dtype, layout):
    x = torch.randn(B, 3, res, res).contiguous(memory_format=layout)
    y = torch.randint(0, nc, (B,)) if nc else None
    ac = torch.autocast("cpu", dtype, enabled=dtype is not None)
    args = (y,) if nc else ()
    with torch.no_grad(), ac:
        fake = G(torch.randn(B, z_dim), *args)
    with ac:
        loss = F.softplus(D(fake, *args).float()).mean() + F.softplus(-D(x, *args).float()).mean()
    optD.zero_grad(set_to_none=True)
    loss.backward()
    optD.step()
    D.requires_grad_(False)
    with ac:
        loss = F.softplus(-D(G(torch.randn(B, z_dim), *args), *args).float()).mean()
    optG.zero_grad(set_to_none=True)
    loss.backward()
    optG.step()
    D.requires_grad_(True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="dcgan,wgan,cgan,sngan,sagan,biggan,stylegan2_ada")
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json")
    a = p.parse_args()
    configs = [
        ("fp32", None, torch.contiguous_format),
        ("fp32", None, torch.channels_last),
        ("bf16", torch.bfloat16, torch.contiguous_format),
        ("bf16", torch.bfloat16, torch.channels_last),
    ]
    rows = []
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, res {a.res}, batch {a.batch}"
    )
    for name in a.models.split(","):
        torch.manual_seed(0)
        m, G, D, z_dim, nc = build(name, a.res)
        nets = []
        for _, dtype, layout in configs:  # one copy of G and D per configuration
            g, d = (
                copy.deepcopy(G).to(memory_format=layout),
                copy.deepcopy(D).to(memory_format=layout),
            )
            nets.append(
                (
                    g,
                    d,
                    torch.optim.Adam(g.parameters(), 1e-4, betas=(0.0, 0.99)),
                    torch.optim.Adam(d.parameters(), 1e-4, betas=(0.0, 0.99)),
                )
            )
        times = [[] for _ in configs]
        for rep in range(2 + a.reps):
            for i, (prec, dtype, layout) in enumerate(configs):
                g, d, og, od = nets[i]
                t = time.perf_counter()
                step(g, d, og, od, z_dim, nc, a.batch, a.res, dtype, layout)
                times[i].append(time.perf_counter() - t)
        med = [statistics.median(t[2:]) * 1000 for t in times]
        for (prec, _, layout), ms in zip(configs, med):
            lay = "channels_last" if layout == torch.channels_last else "NCHW"
            rows.append(
                dict(
                    model=name, precision=prec, layout=lay, ms=round(ms, 1), x=round(med[0] / ms, 2)
                )
            )
            print(f"{name:14s} {prec} {lay:14s} {ms:8.1f} ms/step  {med[0] / ms:5.2f}x", flush=True)
    if a.json:
        json.dump(rows, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
