"""Yahoo Answers text (Yang et al. 2017 split, as used by SA-VAE and He et al. 2019).

Sources, in order (``source: auto``):
1. the split files ``{train,valid,test}.txt`` (or ``yahoo.{train,valid,test}.txt``) in `root` or
   ``<data_dir>/raw/yahoo/``: one tokenized document per line (100k / 10k / 10k in the original);
2. Hugging Face ``datasets``: ``yahoo_answers_topics`` (or a dataset saved with ``save_to_disk`` at
   `hf_path`), from which a split of n_train / n_valid (from its train part) and n_test (from its test
   part) documents is drawn with `split_seed`; a document is title + question + best answer, lowercased
   and tokenized into words and punctuation.

Vocabulary: the `vocab_size` most frequent training tokens (ties broken alphabetically) plus
``<unk>`` (0), ``<s>`` (1) and ``</s>`` (2). A sequence is its first ``max_length - 1`` tokens followed by
``</s>``; ``<s>`` is the decoder's start input (the family's learned start vector), not part of x.
Sequences are stored padded with -1 and batched from length buckets (DataSplits.batches).
Integrity: strict UTF-8 decoding (an error names file and line), optional sha256 per file
(`checksums`), and the expected line counts when given (`expected_lines`).
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch

from ..errors import DataError
from .core import SPLITS, DataSplits, Dataset, sha256_of

SPECIALS = ("<unk>", "<s>", "</s>")
TOKEN = re.compile(r"\w+|[^\w\s]")


def read_documents(path: Path, expected_lines: Optional[int] = None) -> list[list[str]]:
    documents = []
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                documents.append(raw.decode("utf-8", errors="strict").split())
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}, line {number}: not valid UTF-8 ({exc.reason}); the file is corrupt: "
                                "replace it with the original") from None
    if expected_lines is not None and len(documents) != expected_lines:
        raise DataError(f"{path} has {len(documents)} lines, expected {expected_lines} (truncated?): "
                        "replace it with the original file")
    return documents


def build_vocabulary(documents: list[list[str]], size: int) -> list[str]:
    counts = Counter(token for doc in documents for token in doc if token not in SPECIALS)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[: max(0, size - len(SPECIALS))]
    return list(SPECIALS) + [token for token, _ in ranked]


def encode(documents: list[list[str]], vocabulary: list[str], max_length: int) -> torch.Tensor:
    """(N, max_length) int32 token ids padded with -1; each document truncated and ended by </s>."""
    index = {token: i for i, token in enumerate(vocabulary)}
    unk, end = index["<unk>"], index["</s>"]
    out = torch.full((len(documents), max_length), -1, dtype=torch.int32)
    for row, doc in enumerate(documents):
        ids = [index.get(token, unk) for token in doc[: max_length - 1]] + [end]
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
    return out


def tokenize(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


class Yahoo(Dataset):
    name = "yahoo"
    modality = "sequence"
    likelihood = "categorical"

    root: Optional[str] = None
    source: Literal["auto", "files", "huggingface"] = "auto"
    hf_name: str = "yahoo_answers_topics"
    hf_path: Optional[str] = None
    vocab_size: int = 20000
    max_length: int = 200
    n_train: int = 100_000
    n_valid: int = 10_000
    n_test: int = 10_000
    split_seed: int = 0
    expected_lines: Optional[dict] = None  # e.g. {train: 100000, valid: 10000, test: 10000}
    checksums: Optional[dict] = None  # sha256 per split file, e.g. {train: ...}
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None

    def split_files(self, data_dir: Path) -> Optional[dict[str, Path]]:
        """The split files in `root` or data/raw/yahoo/: {train,valid,test}.txt or yahoo.{...}.txt, with the
        validation file also accepted as val.txt (the SA-VAE repository's name)."""
        for folder in ([Path(self.root)] if self.root else []) + [data_dir / "raw" / "yahoo"]:
            for pattern in ("{}.txt", "yahoo.{}.txt"):
                for valid in ("valid", "val"):
                    files = {s: folder / pattern.format(valid if s == "valid" else s) for s in SPLITS}
                    if all(f.is_file() for f in files.values()):
                        return files
        return None

    def from_files(self, files: dict[str, Path]) -> dict[str, list[list[str]]]:
        docs = {}
        for split, path in files.items():
            if self.checksums and split in self.checksums and sha256_of(path) != self.checksums[split]:
                raise DataError(f"{path} has sha256 {sha256_of(path)}, expected {self.checksums[split]}: "
                                "replace it with the original file")
            docs[split] = read_documents(path, (self.expected_lines or {}).get(split))
        return docs

    def from_huggingface(self) -> dict[str, list[list[str]]]:
        import datasets

        try:
            if self.hf_path:
                hub = datasets.load_from_disk(self.hf_path)
            else:
                hub = datasets.load_dataset(self.hf_name)
        except Exception as exc:
            raise DataError(
                f"could not load the Hugging Face dataset {self.hf_path or self.hf_name!r} "
                f"({type(exc).__name__}: {exc}); place the Yang et al. split files train.txt, valid.txt, "
                "test.txt in data/raw/yahoo/, or set hf_path to a dataset saved with save_to_disk"
            ) from None

        def texts(part) -> list[list[str]]:
            return [tokenize(" ".join(str(row[k] or "") for k in ("question_title", "question_content",
                                                                  "best_answer"))) for row in part]

        rng = np.random.default_rng(self.split_seed)
        train_part, test_part = hub["train"], hub["test"]
        if self.n_train + self.n_valid > len(train_part) or self.n_test > len(test_part):
            raise DataError(f"{self.hf_path or self.hf_name} has {len(train_part)} train / {len(test_part)} "
                            f"test rows, fewer than n_train + n_valid = {self.n_train + self.n_valid} / "
                            f"n_test = {self.n_test}")
        train_rows = rng.permutation(len(train_part))[: self.n_train + self.n_valid]
        test_rows = rng.permutation(len(test_part))[: self.n_test]
        return {
            "train": texts(train_part.select(train_rows[: self.n_train].tolist())),
            "valid": texts(train_part.select(train_rows[self.n_train :].tolist())),
            "test": texts(test_part.select(test_rows.tolist())),
        }

    def build(self, data_dir: Path) -> DataSplits:
        files = self.split_files(data_dir) if self.source != "huggingface" else None
        if files is None and self.source == "files":
            raise DataError(f"Yahoo split files (train.txt, valid.txt or val.txt, test.txt) not found in "
                            f"{self.root or data_dir / 'raw' / 'yahoo'}")
        docs = self.from_files(files) if files else self.from_huggingface()
        docs["train"] = docs["train"][: self.train_subset]
        docs["test"] = docs["test"][: self.test_subset]
        vocabulary = build_vocabulary(docs["train"], self.vocab_size)
        encoded = {s: encode(docs[s], vocabulary, self.max_length) for s in SPLITS}
        source = str(files["train"].parent) if files else (self.hf_path or self.hf_name)
        meta = {"source": source, "vocab_size": len(vocabulary), "vocabulary": vocabulary,
                "max_length": self.max_length, "sizes": {s: int(encoded[s].shape[0]) for s in SPLITS}}
        if files:
            meta["sha256"] = {s: sha256_of(p) for s, p in files.items()}
        return DataSplits("yahoo", "sequence", "categorical", encoded["train"], encoded["valid"],
                          encoded["test"], "none", meta)
