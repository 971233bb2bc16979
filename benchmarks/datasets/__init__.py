"""Datasets: fetch, verify, split and prepare; one prepared file per dataset entry.

Modules: ``core`` (DataSplits, the Dataset base class and its registry, checksums), ``images`` (mnist5k,
mnist, fashion_mnist, celeba), ``synthetic`` (linear_gaussian, synthetic_oracle), ``text`` (yahoo).
"""
from .core import (  # noqa: F401
    DATASETS,
    SPLITS,
    DataSplits,
    Dataset,
    available_datasets,
    checksum_path,
    dataset_class,
    prepare,
)
from .images import DEBIAN_FASHION_DIR, CelebA, FashionMnist, Mnist, Mnist5k  # noqa: F401
from .synthetic import LinearGaussianData, SyntheticOracle  # noqa: F401
from .text import Yahoo  # noqa: F401
