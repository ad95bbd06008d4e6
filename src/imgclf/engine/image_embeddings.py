"""Embeddings per image, cached by the image's content: ``update``, ``suggest`` and the review page
embed only what they have not seen.

An entry is keyed by the SHA-256 of the file's bytes, inside a folder keyed by the backbone (every
weight except the last layer's), the preprocessing and the imgclf version. So a renamed or moved
file is found again, an edited one is embedded again, and a fine-tuned backbone never reuses a
pretrained one's embeddings. A training run's linear probe adds its images (``remember``), so the
first ``update`` after ``train`` embeds only the new files.

The cache is append-only: each call writes one new shard (a safetensors file of digests and
embeddings, written atomically under a fresh name), so concurrent writers never overwrite each
other and a killed run keeps the shards it finished. A damaged shard is ignored and removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from imgclf import __version__
from imgclf.data.batches import eval_batch_size, make_batches
from imgclf.data.dataset import FileSplit
from imgclf.data.prepare import Preprocess, TensorSplit, decode_split
from imgclf.data.readers import ImageReader
from imgclf.engine.probe import extract_embeddings
from imgclf.files import atomic_write_tensors
from imgclf.models import ImageClassifier

__all__ = ["EmbeddedFiles", "ImageEmbeddingCache", "backbone_digest", "cache_root", "content_digests", "embed_files"]

CHUNK_IMAGES = 256  # decoded, embedded and written to the cache together: memory stays flat, a kill loses one chunk
DIGEST_BYTES = 32  # SHA-256


def cache_root() -> Path:
    """``$IMGCLF_CACHE_DIR``, else ``~/.cache/imgclf``."""
    return Path(os.environ.get("IMGCLF_CACHE_DIR", Path.home() / ".cache" / "imgclf"))


def backbone_digest(model: ImageClassifier, preprocess: Preprocess) -> str:
    """What an embedding depends on: every tensor of ``model`` but its last layer's, the
    preprocessing and the imgclf version (24 hex digits)."""
    last_layer = {id(tensor) for tensor in model.get_classifier().parameters()}
    digest = hashlib.sha256(json.dumps({"preprocess": preprocess.to_dict(), "imgclf": __version__,
                                        "architecture": type(model).__name__}, sort_keys=True).encode())  # fmt: skip
    for name, tensor in sorted(model.state_dict(keep_vars=True).items()):
        if id(tensor) in last_layer:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def content_digests(reader: ImageReader, keys: list[str], workers: int = 4) -> list[bytes | None]:
    """SHA-256 of each file's bytes (None where the file cannot be read)."""

    def one(key: str) -> bytes | None:
        try:
            return hashlib.sha256(reader.read(key)).digest()
        except Exception:  # unreadable: decoding will name the file and the reason
            return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, keys, chunksize=64))


class ImageEmbeddingCache:
    """The cached embeddings of one backbone and preprocessing (see the module docstring)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._rows: dict[bytes, torch.Tensor] | None = None

    @classmethod
    def for_model(cls, model: ImageClassifier, preprocess: Preprocess, root: Path | None = None):
        return cls((root or cache_root()) / "images" / backbone_digest(model, preprocess))

    def rows(self) -> dict[bytes, torch.Tensor]:
        """Every cached embedding by content digest (read once, then kept up to date by ``add``)."""
        if self._rows is None:
            self._rows = {}
            for shard in sorted(self.folder.glob("*.safetensors")) if self.folder.is_dir() else []:
                self._read_shard(shard)
        return self._rows

    def _read_shard(self, shard: Path) -> None:
        try:
            tensors = load_file(str(shard))
            digests, embeddings = tensors["sha256"].numpy(), tensors["embeddings"]
        except Exception:  # a damaged shard is recomputed, never trusted
            shard.unlink(missing_ok=True)
            return
        for digest, row in zip(digests, embeddings):
            self._rows[digest.tobytes()] = row

    def add(self, digests: list[bytes], embeddings: torch.Tensor) -> None:
        """Write the embeddings not cached yet as one new shard."""
        rows = self.rows()
        new = [i for i, digest in enumerate(digests) if digest not in rows]
        if not new:
            return
        table = torch.from_numpy(np.frombuffer(b"".join(digests[i] for i in new), dtype=np.uint8).copy())
        tensors = {"sha256": table.reshape(len(new), DIGEST_BYTES), "embeddings": embeddings[new].float().contiguous()}
        atomic_write_tensors(self.folder / f"{uuid.uuid4().hex}.safetensors", tensors)
        for i in new:
            rows[digests[i]] = embeddings[i].float()

    def embed_pixels(self, model: ImageClassifier, preprocess: Preprocess, images: torch.Tensor,
                     device: torch.device) -> torch.Tensor:  # fmt: skip
        """Embeddings of decoded uint8 images (N, C, S, S), keyed by their pixels (the abstain
        check's seeded noise images: the same for every fit on one backbone)."""
        digests = [hashlib.sha256(b"pixels:" + image.cpu().numpy().tobytes()).digest() for image in images]
        rows = self.rows()
        unseen = [i for i, digest in enumerate(digests) if digest not in rows]
        if unseen:
            split = TensorSplit(images[unseen], torch.zeros(len(unseen), dtype=torch.int64), [""] * len(unseen))
            batches = make_batches(split, eval_batch_size(preprocess.input_size), workers=0)
            self.add([digests[i] for i in unseen], extract_embeddings(model, batches, preprocess, device)[0])
        return torch.stack([rows[digest] for digest in digests])

    def remember(self, reader: ImageReader, keys: list[str], embeddings: torch.Tensor, workers: int = 4) -> None:
        """Add embeddings computed elsewhere (a training run's probe), row for row of ``keys``."""
        digests = content_digests(reader, keys, workers)
        known = [i for i, digest in enumerate(digests) if digest is not None]
        self.add([digests[i] for i in known], embeddings[known])


@dataclass
class EmbeddedFiles:
    """Embeddings of the files that could be read, row for row of ``indices`` (into the keys asked
    for); ``skipped``: (file, reason) of the others; how many came from the cache."""

    indices: np.ndarray
    embeddings: torch.Tensor
    skipped: list[tuple[str, str]] = field(default_factory=list)
    from_cache: int = 0
    computed: int = 0
    seconds: float = 0.0


def embed_files(
    model: ImageClassifier,
    preprocess: Preprocess,
    reader: ImageReader,
    keys: list[str],
    device: torch.device,
    cache: ImageEmbeddingCache,
    workers: int = 2,
) -> EmbeddedFiles:
    """Embed ``keys`` read by ``reader``, running the backbone only on files whose content the
    cache has not seen (in chunks of CHUNK_IMAGES, each cached as soon as it is done)."""
    started = time.perf_counter()
    digests = content_digests(reader, keys, max(2, workers))
    rows = cache.rows()
    unseen = sorted({digest: i for i, digest in reversed(list(enumerate(digests)))
                     if digest is not None and digest not in rows}.values())  # fmt: skip
    skipped = [(reader.describe(keys[i]), "cannot be read") for i, digest in enumerate(digests) if digest is None]
    from_cache = sum(1 for digest in digests if digest is not None and digest in rows)
    computed = 0
    for start in range(0, len(unseen), CHUNK_IMAGES):
        chunk = unseen[start : start + CHUNK_IMAGES]
        split = FileSplit(reader, [keys[i] for i in chunk], np.zeros(len(chunk), dtype=np.int64))
        decoded, bad = decode_split(split, preprocess, workers)
        skipped += bad
        if len(decoded):
            batches = make_batches(decoded, eval_batch_size(preprocess.input_size), workers=0)
            embeddings, _ = extract_embeddings(model.to(device), batches, preprocess, device)
            digest_of = {key: digests[i] for key, i in zip(split.keys, chunk)}
            cache.add([digest_of[key] for key in decoded.keys], embeddings)
            computed += len(decoded)
    indices = np.array([i for i, digest in enumerate(digests) if digest is not None and digest in rows], dtype=np.int64)
    embeddings = torch.stack([rows[digests[i]] for i in indices]) if len(indices) else torch.empty(0, 0)
    return EmbeddedFiles(indices, embeddings, skipped, from_cache, computed, time.perf_counter() - started)
