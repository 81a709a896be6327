"""GeoDL's loss alone (two PCA bases by SVD + the geodesic flow kernel, float64) on the device it runs on, against
other places to compute it, to explain GeoDL's step time on GPU.

    python benchmarks/bench_gfk.py --device cuda
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from _common import markdown_table, pick_device, sync


def _gram_pca_basis(x: torch.Tensor, dim: int) -> torch.Tensor:
    """PCA basis from the eigenvectors of the n x n Gram matrix (n <= D), float64."""
    x = x - x.mean(-2, keepdim=True)
    evals, evecs = torch.linalg.eigh(x @ x.transpose(-2, -1))
    evals, evecs = evals.flip(-1)[..., :dim], evecs.flip(-1)[..., :dim]
    return (x.transpose(-2, -1) @ evecs) / evals.clamp_min(1e-30).sqrt().unsqueeze(-2)


def routes(s: torch.Tensor, t: torch.Tensor):
    from clip_cl.losses import (
        geodesic_distillation_loss,
        gfk_matrix,
        resolve_subspace_dim,
    )

    d = resolve_subspace_dim(*s.shape)

    def current():
        return geodesic_distillation_loss(s, t)

    def host():
        return geodesic_distillation_loss(s.cpu(), t.cpu()).to(s.device)

    def gram():
        a, b = F.normalize(s.float(), dim=-1), F.normalize(t.float(), dim=-1)
        bases = _gram_pca_basis(torch.stack([a, b]).double(), d)
        kernel = gfk_matrix(bases[0], bases[1]).float()
        diff = a - b
        return ((diff @ kernel) * diff).sum(-1).mean()

    return {"svd_on_device_fp64": current, "on_host_fp64": host, "gram_eigh_on_device_fp64": gram}


def bench(device, sizes=(64, 256), dim=512, reps=20, log=print) -> dict:
    out = {}
    g = torch.Generator().manual_seed(0)
    for n in sizes:
        s = F.normalize(torch.randn(n, dim, generator=g), dim=-1).to(device)
        t = F.normalize(s.cpu() + 0.3 * torch.randn(n, dim, generator=g), dim=-1).to(device)
        fns = routes(s, t)
        ref = fns["svd_on_device_fp64"]().item()
        for name, fn in fns.items():
            for _ in range(3):
                fn()
            sync(device)
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                value = fn()
                sync(device)
                times.append(time.perf_counter() - t0)
            times.sort()
            out[f"{n}/{name}"] = {"ms": 1000 * times[len(times) // 2], "value": value.item(),
                                  "rel_diff_vs_current": abs(value.item() - ref) / abs(ref)}
            log(f"[gfk] n={n} {name}: {out[f'{n}/{name}']}")
    return out


def table(res: dict) -> str:
    rows = [[k, f"{v['ms']:.2f}", f"{v['rel_diff_vs_current']:.1e}"] for k, v in res.items()]
    return "GeoDL loss (one term, forward only), n x 512 features:\n" + markdown_table(
        ["n / route", "ms", "relative difference to the current route"], rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    print(table(bench(pick_device(a.device))))


if __name__ == "__main__":
    main()
