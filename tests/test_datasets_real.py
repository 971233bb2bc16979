"""MNIST, CelebA and Yahoo through their real loaders, on fixtures written in the exact upstream layout
(idx .gz files, Larochelle's .amat files, img_align_celeba/ JPEGs + list_eval_partition.txt, Yahoo's
split text files, a saved Hugging Face dataset), then through batching and one training step."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from benchmarks import models
from benchmarks.datasets import DataSplits, checksum_path, prepare
from benchmarks.datasets import images as image_datasets
from benchmarks.errors import DataError
from methods import build_method
from methods.base import Step

from .test_datasets import write_fashion_fixture


def one_training_step(data, model_options, method="avi"):
    torch.manual_seed(0)
    m = build_method(method, models.build(data, model_options))
    x = next(data.batches("train", 4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    loss = m.loss(x, Step())
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.model.parameters())
    return float(loss.detach())


# --- MNIST ------------------------------------------------------------------------------------------

def test_mnist_idx_files_iwae_split(tmp_path, monkeypatch):
    fixture = write_fashion_fixture(tmp_path / "raw" / "mnist", n_train=50, n_test=12)
    monkeypatch.setattr(image_datasets.Mnist, "RAW_MD5", fixture["checksums"])
    data = prepare("mnist", {"n_valid": 4, "download": False}, tmp_path)
    assert (data.train.shape[0], data.valid.shape[0], data.test.shape[0]) == (46, 4, 12)
    assert data.train_transform == "dynamic_binarize" and set(torch.unique(data.test).tolist()) <= {0, 1}
    one_training_step(data, {"latent_dim": 3, "hidden": [8]})


def test_mnist_static_binarization_from_amat_files(tmp_path, monkeypatch):
    folder = tmp_path / "raw" / "binarized_mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sha1 = {}
    for name, rows in zip(image_datasets.LAROCHELLE_SHA1, (20, 6, 8)):
        text = "\n".join(" ".join(map(str, r)) for r in rng.integers(0, 2, (rows, 784))) + "\n"
        (folder / name).write_text(text)
        sha1[name] = hashlib.sha1(text.encode()).hexdigest()
    monkeypatch.setattr(image_datasets, "LAROCHELLE_SHA1", sha1)
    data = prepare("mnist", {"binarization": "static", "download": False}, tmp_path)
    assert (data.train.shape, data.valid.shape, data.test.shape) == ((20, 784), (6, 784), (8, 784))
    assert data.train_transform == "none"
    (folder / "binarized_mnist_test.amat").write_text("0 1\n")
    (tmp_path / "raw" / "binarized_mnist_verified" / "binarized_mnist_test.amat").unlink()
    with pytest.raises(DataError, match="binarized_mnist_test.amat has the wrong content"):
        prepare("mnist", {"binarization": "static", "download": False}, tmp_path)


def test_mnist_missing_files_name_the_place(tmp_path):
    with pytest.raises(DataError, match=r"raw/mnist"):
        prepare("mnist", {"download": False}, tmp_path)


# --- CelebA -----------------------------------------------------------------------------------------

def write_celeba_fixture(folder, counts=(5, 2, 3)):
    from PIL import Image

    (folder / "img_align_celeba").mkdir(parents=True)
    lines, number = [], 0
    generator = torch.Generator().manual_seed(0)
    for split, count in enumerate(counts):
        for _ in range(count):
            number += 1
            name = f"{number:06d}.jpg"
            image = (torch.rand(3, 218, 178, generator=generator) * 255).to(torch.uint8)
            image[:, 80:140, 60:120] = 200  # a bright square in the middle survives the center crop
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / "img_align_celeba" / name, quality=95)
            lines.append(f"{name} {split}")
    (folder / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return hashlib.md5((folder / "list_eval_partition.txt").read_bytes()).hexdigest()


def test_celeba_from_aligned_jpegs_and_partition_file(tmp_path):
    md5 = write_celeba_fixture(tmp_path / "raw" / "celeba")
    data = prepare("celeba", {"image_size": 16, "partition_md5": md5, "download": False}, tmp_path)
    assert data.train.shape == (5, 3, 16, 16) and data.valid.shape == (2, 3, 16, 16)
    assert data.test.shape == (3, 3, 16, 16) and data.train.dtype == torch.uint8
    assert float(data.train[:, :, 6:10, 6:10].float().mean()) > 150  # the center crop kept the square
    x = next(data.batches("test", 3))
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    options = {"latent_dim": 4, "channels": [8, 16], "features": 32}
    for likelihood in ("discretized_logistic", "gaussian"):
        one_training_step(data, {**options, "likelihood": likelihood})


def test_celeba_errors_name_the_file_and_the_fix(tmp_path):
    folder = tmp_path / "raw" / "celeba"
    md5 = write_celeba_fixture(folder)
    with pytest.raises(DataError, match="list_eval_partition.txt has md5"):
        prepare("celeba", {"image_size": 16, "download": False}, tmp_path)  # the real md5 is expected
    (folder / "img_align_celeba" / "000002.jpg").unlink()
    with pytest.raises(DataError, match="000002.jpg is missing"):
        prepare("celeba", {"image_size": 16, "partition_md5": md5, "download": False}, tmp_path)
    with pytest.raises(DataError, match="place img_align_celeba/"):
        prepare("celeba", {"download": False}, tmp_path / "elsewhere")


def test_celeba_refused_download_says_how_to_place_files(tmp_path, monkeypatch):
    import torchvision

    def refused(*args, **kwargs):
        raise RuntimeError("Too many users have viewed or downloaded this file recently")

    monkeypatch.setattr(torchvision.datasets, "CelebA", refused)
    with pytest.raises(DataError, match="often refuses automated downloads: place img_align_celeba/"):
        prepare("celeba", {}, tmp_path)


# --- Yahoo ------------------------------------------------------------------------------------------

YAHOO_TRAIN = ["the cat sat on the mat", "the dog sat", "a cat and a dog", "the the the end"]


def write_yahoo_fixture(folder, prefix=""):
    folder.mkdir(parents=True, exist_ok=True)
    texts = {"train": YAHOO_TRAIN, "valid": ["the cat", "a zebra sat"], "test": ["dog on mat", "the cat sat"]}
    for split, lines in texts.items():
        (folder / f"{prefix}{split}.txt").write_text("\n".join(lines) + "\n")
    return texts


def test_yahoo_split_files_vocabulary_and_encoding(tmp_path):
    write_yahoo_fixture(tmp_path / "raw" / "yahoo", prefix="yahoo.")
    data = prepare("yahoo", {"vocab_size": 8, "max_length": 5}, tmp_path)
    vocab = data.meta["vocabulary"]
    # counts: the 6; a, cat, dog, sat 2 (ties alphabetical); and, end, mat, on 1 (cut)
    assert vocab == ["<unk>", "<s>", "</s>", "the", "a", "cat", "dog", "sat"]
    assert data.meta["vocab_size"] == 8 and data.valid.shape == (2, 5)
    index = {w: i for i, w in enumerate(vocab)}
    # "the cat sat on the mat" is cut to 4 words + </s>; words outside the vocabulary become <unk>
    expected = [index.get(w, 0) for w in "the cat sat on".split()] + [index["</s>"]]
    assert data.train[0].tolist() == expected
    assert data.valid[1].tolist()[:4] == [index["a"], 0, index["sat"], index["</s>"]]
    assert data.valid[1].tolist()[4] == -1  # padding
    batch = next(data.batches("valid", 2))
    assert batch.dtype == torch.int64 and batch.shape == (2, 4)  # trimmed to the longest sequence


def test_yahoo_validation_file_may_be_named_val_txt(tmp_path):
    """The SA-VAE repository ships train.txt, val.txt, test.txt: val.txt is read as the validation split."""
    folder = tmp_path / "raw" / "yahoo"
    texts = write_yahoo_fixture(folder)
    (folder / "valid.txt").rename(folder / "val.txt")
    data = prepare("yahoo", {"vocab_size": 8, "max_length": 5}, tmp_path)
    assert data.valid.shape[0] == len(texts["valid"])
    (folder / "val.txt").unlink()
    with pytest.raises(DataError, match="valid.txt or val.txt"):
        prepare("yahoo", {"source": "files"}, tmp_path)


def test_yahoo_bucketing_groups_similar_lengths():
    lengths = torch.randint(1, 60, (2000,))
    tokens = torch.full((2000, 60), -1, dtype=torch.int32)
    for i, n in enumerate(lengths):
        tokens[i, :n] = 3
    data = DataSplits("yahoo", "sequence", "categorical", tokens, tokens[:10], tokens[:10], meta={"vocab_size": 5})
    batches = list(data.batches("train", 50, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert sum(b.shape[0] for b in batches) == 2000
    padding = sum(int((b < 0).sum()) for b in batches)
    unsorted = list(data.batches("train", 50))  # the same trimming without buckets
    assert padding < 0.25 * sum(int((b < 0).sum()) for b in unsorted)


def test_yahoo_corrupt_or_truncated_files_are_named(tmp_path):
    folder = tmp_path / "raw" / "yahoo"
    write_yahoo_fixture(folder)
    with pytest.raises(DataError, match="train.txt has 4 lines, expected 100000"):
        prepare("yahoo", {"expected_lines": {"train": 100000}}, tmp_path)
    (folder / "test.txt").write_bytes(b"fine line\nbad \xff\xfe bytes\n")
    with pytest.raises(DataError, match="test.txt, line 2: not valid UTF-8"):
        prepare("yahoo", {}, tmp_path)


def test_yahoo_from_a_saved_hugging_face_dataset(tmp_path):
    import datasets

    def rows(n, offset):
        return {"id": list(range(offset, offset + n)), "topic": [i % 10 for i in range(n)],
                "question_title": [f"Title {i}?" for i in range(offset, offset + n)],
                "question_content": [f"why is {i % 7} odd" for i in range(n)],
                "best_answer": [f"Because {i % 3}!" for i in range(n)]}

    saved = tmp_path / "hf_yahoo"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows(40, 0)),
                          "test": datasets.Dataset.from_dict(rows(10, 1000))}).save_to_disk(str(saved))
    options = {"source": "huggingface", "hf_path": str(saved), "n_train": 20, "n_valid": 5, "n_test": 6,
               "vocab_size": 30, "max_length": 12}
    a = prepare("yahoo", options, tmp_path)
    b = prepare("yahoo", options, tmp_path)
    assert torch.equal(a.train, b.train) and a.meta["vocabulary"] == b.meta["vocabulary"]
    assert (a.train.shape[0], a.valid.shape[0], a.test.shape[0]) == (20, 5, 6)
    assert "?" in a.meta["vocabulary"] and "because" in a.meta["vocabulary"]  # lowercased, punctuation split
    one_training_step(a, {"latent_dim": 4, "embed_dim": 8, "hidden": 16})
    with pytest.raises(DataError, match="fewer than"):
        prepare("yahoo", {**options, "n_train": 100}, tmp_path)
    with pytest.raises(DataError, match="place the Yang et al. split files"):
        prepare("yahoo", {"source": "huggingface", "hf_path": str(tmp_path / "nope")}, tmp_path)


# --- prepared files ---------------------------------------------------------------------------------

def test_prepared_file_checksum_mismatch_is_refused(tmp_path):
    data = prepare("linear_gaussian", {"n_train": 20, "n_valid": 5, "n_test": 5}, tmp_path)
    path = tmp_path / "lg.pt"
    data.save(path, {"dataset": "linear_gaussian"})
    assert checksum_path(path).read_text().strip() == hashlib.sha256(path.read_bytes()).hexdigest()
    DataSplits.load(path)
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="does not match its checksum"):
        DataSplits.load(path)
