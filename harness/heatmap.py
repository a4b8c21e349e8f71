"""Error-structure picture: |out - ref| by output row and column, folded by 32 and 128 columns.

A layout fault's periodic pattern (a bad interleave repeats every 32 or 128 columns of K or N)
shows up as stripes in the folded panels. matplotlib is imported lazily (extra ``plot``).
"""

from __future__ import annotations

from pathlib import Path

import torch


def error_folds(out: torch.Tensor, ref: torch.Tensor, folds=(32, 128)) -> dict:
    """Mean |error| / rms(ref): the full [rows, cols] map and, per fold f, [rows, f] by column mod f."""
    err = (out.float() - ref.float()).abs().cpu()
    err = torch.nan_to_num(err, nan=float("inf")) / ref.float().square().mean().sqrt().clamp_min(1e-30).cpu()
    res = {"full": err}
    cols = err.shape[-1]
    for f in folds:
        if cols % f == 0:
            res[f"mod{f}"] = err.reshape(err.shape[0], cols // f, f).mean(1)
    return res


def save_heatmap(out: torch.Tensor, ref: torch.Tensor, path: str | Path, title: str = "") -> Path:
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("the error heatmap needs matplotlib: pip install 'moe-accuracy[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = error_folds(out, ref)
    fig, axes = plt.subplots(1, len(maps), figsize=(5 * len(maps), 4), squeeze=False)
    for ax, (name, m) in zip(axes[0], maps.items()):
        im = ax.imshow(m.clamp(max=float(m[torch.isfinite(m)].max()) if torch.isfinite(m).any() else 1.0).numpy(),
                       aspect="auto", interpolation="nearest", cmap="magma")
        ax.set_title({"full": "|err| / rms(ref)", "mod32": "folded: column mod 32", "mod128": "folded: column mod 128"}[name])
        ax.set_xlabel("output column" if name == "full" else name.replace("mod", "column mod "))
        ax.set_ylabel("token")
        fig.colorbar(im, ax=ax)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
