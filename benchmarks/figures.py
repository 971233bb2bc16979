"""Per-run figures: reconstructions (x and the decoder mean at E_q[z]) and samples (decoder mean at
z ~ p(z)), drawn for the data's modality: image grids, decoded token sequences, or the first two
coordinates of vector data."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .io import atomic_path  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _image_rows(rows: list[torch.Tensor], shape: list[int], titles: list[str], path: Path, heading: str) -> Path:
    n = rows[0].shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n, 1.2 * len(rows) + 0.4), dpi=100, squeeze=False)
    for r, (row, title) in enumerate(zip(rows, titles)):
        for c in range(n):
            image = row[c].reshape(shape).float().clamp(0, 1)
            ax = axes[r][c]
            if shape[0] == 1:
                ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(image.permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title, fontsize=8)
    fig.suptitle(heading, fontsize=10)
    return _save(fig, path)


def _text_rows(lines: list[str], path: Path, heading: str) -> Path:
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(lines) + 0.8), dpi=100)
    ax.axis("off")
    for i, line in enumerate(lines):
        ax.text(0.0, 1.0 - (i + 0.5) / len(lines), line[:110], family="monospace", fontsize=8,
                va="center", transform=ax.transAxes)
    ax.set_title(heading, fontsize=10)
    return _save(fig, path)


def _words(tokens: torch.Tensor, vocabulary: list[str] | None) -> str:
    ids = [int(t) for t in tokens if int(t) >= 0]
    if vocabulary:
        return " ".join(vocabulary[i] if i < len(vocabulary) else f"<{i}>" for i in ids)
    return " ".join(map(str, ids))


@torch.no_grad()
def draw(method, data, recon_path: Path, sample_path: Path, n: int = 8, seed: int = 0) -> tuple[Path, Path]:
    """Write the reconstructions and samples figures of a trained method."""
    torch.manual_seed(seed)
    model = method.model
    device = next(model.parameters()).device
    x = next(data.batches("test", n, device=device))
    z_post = method.posterior(x).mean()
    z_prior = torch.randn(n, model.latent_dim, device=device)
    name = f"{data.name} / {method.name}"
    if data.modality == "image":
        shape = data.meta["image_shape"]
        _image_rows([x.cpu(), model.decode_mean(z_post).cpu()], shape, ["data", "reconstruction"], recon_path,
                    f"{name}: reconstructions (decoder mean at E_q[z])")
        _image_rows([model.decode_mean(z_prior).cpu()], shape, ["sample"], sample_path,
                    f"{name}: samples (decoder mean, z ~ p(z))")
    elif data.modality == "sequence":
        vocabulary = data.meta.get("vocabulary")
        recon = model.decode_mean(z_post)
        lines = []
        for i in range(n):
            lines += [f"x : {_words(x[i], vocabulary)}", f"x^: {_words(recon[i], vocabulary)}"]
        _text_rows(lines, recon_path, f"{name}: reconstructions (greedy decoding at E_q[z])")
        samples = model.decode_mean(z_prior)
        _text_rows([_words(s, vocabulary) for s in samples], sample_path,
                   f"{name}: samples (greedy decoding, z ~ p(z))")
    else:
        recon, samples = model.decode_mean(z_post).cpu(), model.decode_mean(z_prior).cpu()
        for path, points, label in ((recon_path, recon, "reconstruction"), (sample_path, samples, "sample")):
            fig, ax = plt.subplots(figsize=(4.5, 4), dpi=100)
            ax.scatter(x[:, 0].cpu(), x[:, 1].cpu(), label="data", marker="o")
            ax.scatter(points[:, 0], points[:, 1], label=label, marker="x")
            ax.set_xlabel("x[0]")
            ax.set_ylabel("x[1]")
            ax.legend(fontsize=8)
            ax.set_title(f"{name}: {label}s (first two coordinates)", fontsize=9)
            _save(fig, path)
    return recon_path, sample_path
