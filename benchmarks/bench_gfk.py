"""GeoDL's loss alone (two PCA bases + the geodesic flow kernel, float64) on the device it runs on: clip-cl's route
(PCA from an eigendecomposition of the smaller Gram matrix, the kernel kept in factored form) against the route it
replaced (SVDs, the D x D kernel formed) and against the same loss computed on the host.

    python benchmarks/bench_gfk.py --device cuda
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from _common import HelpFormatter, markdown_table, pick_device, sync


def _svd_pca_basis(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The PCA basis by an SVD of the centred features (clip-cl before issue #7)."""
    _, _, vh = torch.linalg.svd(x - x.mean(-2, keepdim=True), full_matrices=False)
    return vh[..., :dim, :].transpose(-2, -1)


def routes(s: torch.Tensor, t: torch.Tensor):
    from clip_cl.losses import (
        geodesic_distillation_loss,
        gfk_matrix,
        resolve_subspace_dim,
    )

    d = resolve_subspace_dim(*s.shape)

    def current():  # eigh-based PCA, GFK kept factored
        return geodesic_distillation_loss(s, t)

    def host():
        return geodesic_distillation_loss(s.cpu(), t.cpu()).to(s.device)

    def svd_and_formed_kernel():  # before: two SVDs for the bases, then the D x D kernel
        a, b = F.normalize(s.float(), dim=-1), F.normalize(t.float(), dim=-1)
        bases = _svd_pca_basis(torch.stack([a, b]).double(), d)
        kernel = gfk_matrix(bases[0], bases[1]).float()
        diff = a - b
        return ((diff @ kernel) * diff).sum(-1).mean()

    return {"current": current, "on_host": host, "before_svd_formed_kernel": svd_and_formed_kernel}


def bench(device, sizes=(64, 256), dim=512, reps=20, log=print) -> dict:
    out = {}
    g = torch.Generator().manual_seed(0)
    for n in sizes:
        s = F.normalize(torch.randn(n, dim, generator=g), dim=-1).to(device)
        t = F.normalize(s.cpu() + 0.3 * torch.randn(n, dim, generator=g), dim=-1).to(device)
        fns = routes(s, t)
        ref = fns["current"]().item()
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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    print(table(bench(pick_device(a.device))))


if __name__ == "__main__":
    main()
