"""Dataset registry: fetch, verify, split and prepare; one prepared file per dataset.

Modules: ``core`` (DataSplits, the registry, checksums), ``images`` (mnist5k, mnist, fashion_mnist,
celeba), ``synthetic`` (linear_gaussian, synthetic_oracle), ``text`` (yahoo). Importing this package
registers them all.
"""
from . import images, synthetic, text  # noqa: F401  (registers the datasets)
from .core import (  # noqa: F401
    SPLITS,
    DataSplits,
    available_datasets,
    checksum_path,
    dataset,
    dataset_class,
    prepare,
)
from .images import DEBIAN_FASHION_DIR, FashionMnist, Mnist, Mnist5k  # noqa: F401
from .synthetic import LinearGaussianData, SyntheticOracle  # noqa: F401
from .text import Yahoo  # noqa: F401
