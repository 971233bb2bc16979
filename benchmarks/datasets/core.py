"""The prepared-data container, the dataset base class with its registry, and shared helpers.

A dataset is an ``Options`` subclass (its fields are the `data:` options of a config entry) that sets
``name``, the ``modality`` and ``likelihood`` of the data it builds and ``version`` (raise it when the
code changes what ``build`` produces); ``build(data_dir)`` returns a ``DataSplits``: train / valid / test
tensors. The ``prepare`` stage saves it with ``save``: the tensors, the dataset's name, version and
resolved options, plus a sha256 sidecar. Training and evaluation ``load`` it and refuse a file whose
checksum no longer matches or that was made from other options or another version of the code.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterator, Optional

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..io import torch_save, write_text
from ..options import Options
from ..registry import Registry

PREPARED_FORMAT = "amortbench.prepared/2"
DATASETS = Registry("dataset", "benchmarks.datasets")
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
            return raw.long()  # token ids, padded with -1
        if self.likelihood == "discrete_pixels":
            return raw.float() / 255.0  # 8-bit pixels as k / 255 in [0, 1]
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
        indices: torch.Tensor | None = None,
    ) -> Iterator[torch.Tensor]:
        """Minibatches of a split (the last may be smaller), moved to `device`: the first `limit` points,
        or the points at `indices` (in that order).

        Sequences: shuffled batches are formed from length-sorted buckets of 20 batches (less padding),
        and each batch is trimmed to its longest sequence.
        """
        data = self.split(split)
        n = data.shape[0] if limit is None else min(limit, data.shape[0])
        if indices is not None:
            n, base = len(indices), torch.as_tensor(indices, dtype=torch.long)
            order = base[torch.randperm(n, generator=generator)] if shuffle else base
        else:
            order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        batches = list(order.split(batch_size))
        if self.modality == "sequence" and shuffle:
            lengths = (data >= 0).sum(1)
            bucket = 20 * batch_size
            chunks = [c[torch.argsort(lengths[c], stable=True)] for c in order.split(bucket)]
            batches = list(torch.cat(chunks).split(batch_size))
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
        for idx in batches:
            raw = data[idx]
            if self.modality == "sequence":
                raw = raw[:, : max(1, int((raw >= 0).sum(1).max()))]
            yield self.to_model_input(raw, split, generator).to(device)

    def save(self, path: str | Path, provenance: dict) -> None:
        """Write the prepared file and `<path>.sha256` (checked by ``load``). `provenance`: the dataset's
        name, code version and resolved options (``Dataset.provenance()``)."""
        payload = {
            "format": PREPARED_FORMAT,
            "provenance": provenance,
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
        }
        torch_save(path, payload)
        write_text(checksum_path(path), sha256_of(Path(path)) + "\n")

    @classmethod
    def load(cls, path: str | Path, expect: Optional[dict] = None) -> "DataSplits":
        """Read a prepared file after checking its sha256 sidecar; with `expect` (the provenance the
        caller's config resolves to), refuse a file made from other options or another code version."""
        path = Path(path)
        if not path.exists():
            raise DataError(f"prepared data {path} does not exist; run `snakemake {path}` to prepare it")
        sidecar = checksum_path(path)
        if not sidecar.exists():
            raise DataError(f"prepared data {path} has no checksum file {sidecar}; delete {path} and rerun the "
                            "pipeline to prepare it again")
        if sidecar.read_text().strip() != sha256_of(path):
            raise DataError(
                f"prepared data {path} does not match its checksum {sidecar} (corrupt or truncated); "
                "delete both files and rerun the pipeline to prepare them again"
            )
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, foreign or a pickle payload weights_only refuses
            raise DataError(
                f"prepared data {path} is unreadable ({type(exc).__name__}: {str(exc)[:200]}); delete it and "
                "rerun the pipeline to prepare it again"
            ) from None
        if not isinstance(payload, dict) or payload.get("format") != PREPARED_FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise DataError(f"{path} is not an amortbench prepared-data file of format {PREPARED_FORMAT} "
                            f"(found {found!r}); delete it and rerun the pipeline to prepare it again")
        if expect is not None and payload["provenance"] != expect:
            raise DataError(
                f"prepared data {path} was made by {_describe(payload['provenance'])}, but this cell's config "
                f"asks for {_describe(expect)}; delete {path} (and its .sha256) and rerun to prepare it "
                "from the current config"
            )
        return cls(**{f.name: payload[f.name] for f in dataclasses.fields(cls)})


def _describe(provenance: dict) -> str:
    return (f"dataset {provenance.get('dataset')!r} version {provenance.get('version')} with options "
            f"{provenance.get('options')}")


# --------------------------------------------------------------------------------------------------
# the dataset base class


class Dataset(Options):
    """The `data:` options of one registered dataset, and how to build its splits from them."""

    name: ClassVar[str] = ""
    modality: ClassVar[str] = ""  # image | vector | sequence
    likelihood: ClassVar[str] = ""  # bernoulli | gaussian | categorical | discrete_pixels
    version: ClassVar[int] = 1  # raise when build() produces different data from the same options

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs):
        super().__pydantic_init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            DATASETS.add(cls)

    def build(self, data_dir: Path) -> DataSplits:
        raise NotImplementedError

    def provenance(self) -> dict:
        """What a prepared file records and what ``DataSplits.load`` checks."""
        return {"dataset": self.name, "version": self.version, "options": self.to_dict()}


def dataset_class(name: str) -> type[Dataset]:
    return DATASETS.get(name)


def available_datasets() -> list[str]:
    return DATASETS.names()


def checksum_path(path: str | Path) -> Path:
    return Path(f"{path}.sha256")


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    return file_digest(path, "sha256")


def md5_of(path: Path) -> str:
    return file_digest(path, "md5")


def split_indices(n: int, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """A seeded random partition of range(n): test first, then valid; train takes the rest."""
    if sizes["test"] + sizes["valid"] >= n:
        raise ConfigError(f"valid ({sizes['valid']}) + test ({sizes['test']}) must be < {n} examples")
    perm = np.random.default_rng(seed).permutation(n)
    n_test, n_valid = sizes["test"], sizes["valid"]
    return {"test": perm[:n_test], "valid": perm[n_test : n_test + n_valid], "train": perm[n_test + n_valid :]}


def prepare(name: str, options: dict | None, data_dir: str | Path) -> DataSplits:
    """Build dataset `name` with its `data:` options (validated) from files under `data_dir`."""
    return dataset_class(name).parse(options, f"datasets.{name}.data").build(Path(data_dir))
