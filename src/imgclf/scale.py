"""Predicting millions of images: sources listed in a fixed order, shards that split them, a
picklable ``Predictor`` for Ray, Spark, Dask or a job array, and rows written as they come.

- **Sources** (``list_sources``): image files, folders (searched below), archives (.zip, .tar...),
  CSV listings (a path column) and text lists (.txt, one path per line), in the order given and
  sorted within each; every item is (name, reader, key).
- **Shards** (``in_shard``): ``--shard I/N`` keeps the items whose name hashes to I modulo N, so N
  jobs given the same sources split them with no overlap and no gap, whatever order they run in.
- **Predictor**: built from a bundle folder or an exported ``.onnx`` file; only its arguments are
  pickled (each worker loads the model once, on first use); called on a batch of encoded files
  (bytes) or decoded images, it returns columns: one list per output field.
- **Rows** (``PartWriter``): every chunk of rows is written atomically as a part file beside the
  output (``OUTPUT.parts/``); the finished run joins them into OUTPUT (.parquet, .csv or .jsonl).
  A killed run keeps its parts, and ``resume`` skips the items they hold: no row twice, none lost.
  Parts of a Parquet output are JSON lines, joined by pyarrow's own JSON reader: turning Python
  rows into Arrow arrays makes pyarrow import pandas (0.33 s: 7% of a run over 10,000 small files).
- **Names** (``written_name``): a file name that is not valid UTF-8 (Linux allows any bytes) is
  written with its odd bytes as ``\xff`` escapes, and resuming compares names that way too.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np

from imgclf.data.dataset import PATH_COLUMNS
from imgclf.data.layout import IMAGE_SUFFIXES, image_files_below, is_junk
from imgclf.data.readers import ARCHIVE_SUFFIXES, FolderReader, ImageReader, open_reader, read_image_file
from imgclf.errors import DataError, ImgclfError, UsageError
from imgclf.files import atomic_write_bytes, atomic_write_with, check_can_write

__all__ = [
    "COLUMNS",
    "OUTPUT_FORMATS",
    "PartWriter",
    "Predictor",
    "in_shard",
    "list_sources",
    "parse_shard",
    "row_of",
    "written_name",
]

# Every output row, whatever the format: JSON text in top_k and labels keeps one flat schema.
COLUMNS = ("path", "label", "probability", "labels", "top_k", "abstained", "error")
OUTPUT_FORMATS = (".parquet", ".csv", ".jsonl")


def _listing_paths(path: Path) -> list[str]:
    """The image paths a CSV (its path column) or a text list (one per line) names, relative to it."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
        header = [cell.strip().lower() for cell in rows[0]] if rows else []
        column = next((i for i, name in enumerate(header) if name in PATH_COLUMNS), None)
        if column is None:
            raise DataError(f"{path}: no path column (one of {', '.join(PATH_COLUMNS)})")
        cells = [row[column] for row in rows[1:] if len(row) > column and row[column].strip()]
    else:
        cells = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [str(path.parent / cell) for cell in cells]


def list_sources(sources: list[str]) -> list[tuple[str, ImageReader, str]]:
    """(name, reader, key) of every image the sources hold (see the module docstring)."""
    local, items = FolderReader(Path(".")), []
    for source in sources:
        path = Path(source)
        lower = path.name.lower()
        if path.is_file() and lower.endswith((".csv", ".txt")):
            items += [(name, local, name) for name in _listing_paths(path)]
        elif path.is_file() and lower.endswith(ARCHIVE_SUFFIXES + (".zip",)):
            reader = open_reader(path)
            keys = [key for key in sorted(reader.list_files()) if Path(key).suffix.lower() in IMAGE_SUFFIXES
                    and not any(is_junk(part) for part in Path(key).parts)]  # fmt: skip
            items += [(f"{source}:{key}", reader, key) for key in keys]
        elif path.is_dir():
            items += [(name, local, name) for name in image_files_below(path)]
        else:  # a file, or a missing one (its row will say so), is taken as it is
            items.append((str(path), local, str(path)))
    return items


def parse_shard(text: str) -> tuple[int, int]:
    """ "I/N" as (I, N), 0 <= I < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard must look like I/N (0/4 ... 3/4), not {text!r}") from None
    if not 0 <= index < count:
        raise UsageError(f"--shard {text}: I must be at least 0 and below N")
    return index, count


def in_shard(name: str, index: int, count: int) -> bool:
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % count == index


def written_name(name: str) -> str:
    """``name`` as it can be written to a UTF-8 file: bytes that were not UTF-8 (kept by Python as
    lone surrogates) become ``\xff`` escapes; every other name is unchanged."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def row_of(name: str, answer: dict) -> dict:
    """One output row from ``predict``'s answer for one image."""
    top = answer.get("top_k") or []
    return {
        "path": written_name(name),
        "label": answer.get("label"),
        "probability": top[0]["probability"] if top and answer.get("label") is not None else None,
        "labels": json.dumps(answer["labels"]) if "labels" in answer else None,
        "top_k": json.dumps(top) if top else None,
        "abstained": answer.get("abstained"),
        "error": answer.get("error"),
    }


class Predictor:
    """A model for batch engines: ``Predictor("bundle_or.onnx")(batch)`` -> columns.

    ``batch``: a list of encoded image files (bytes), file paths or decoded images (HxWxC uint8
    arrays); or a dict or pandas DataFrame with a ``"bytes"``, ``"image"`` or ``"path"`` column (Ray
    Data and Dask batches; a ``"path"`` column alongside is passed through). Returns a dict of lists, one per COLUMNS
    field but ``path`` (a file that cannot be decoded gets its ``error`` and empty fields: one bad
    file never fails the batch). Pickling keeps only the arguments: each worker loads the model
    itself, once."""

    def __init__(self, source: str | Path, top_k: int = 5, threads: int = 1, tta: str = "none"):
        self.source, self.top_k, self.threads, self.tta = str(source), top_k, threads, tta
        self._engine = None

    def __getstate__(self) -> dict:
        return {"source": self.source, "top_k": self.top_k, "threads": self.threads, "tta": self.tta}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    @property
    def engine(self):
        return self.load()

    def load(self):
        """The model's engine, loaded on first use: a file that is no model raises here (UsageError)."""
        if self._engine is None:
            from imgclf.engines import open_engine

            self._engine = open_engine(self.source, threads=self.threads, tta=self.tta)
        return self._engine

    @property
    def classes(self) -> list[str]:
        return list(self.engine.metadata["classes"])

    def decode(self, item, name: str = "") -> np.ndarray:
        """An encoded file (bytes) or an image array, as the model takes it (BadImageError if unreadable)."""
        if isinstance(item, bytes | bytearray | memoryview):
            return self.engine.decode(bytes(item), name or "image")
        if isinstance(item, str | Path):  # a file path (Spark's predict_batch_udf takes string columns)
            return self.engine.decode(read_image_file(Path(item)), str(item))
        return self.engine.prepare_array(np.asarray(item))

    def answers(self, items: list, names: list[str] | None = None) -> list[dict]:
        """``predict``'s answer per item: label, top_k, abstained, or error."""
        names = names or [""] * len(items)
        decoded: list[np.ndarray | None] = []
        answers: list[dict] = [{} for _ in items]
        for index, (item, name) in enumerate(zip(items, names)):
            try:
                decoded.append(self.decode(item, name))
            except ImgclfError as error:  # BadImageError among them: a file that is not an image
                decoded.append(None)
                answers[index] = {"error": getattr(error, "reason", str(error))}
        good = [i for i, image in enumerate(decoded) if image is not None]
        if good:
            for index, answer in zip(good, self.engine.predict([decoded[i] for i in good], self.top_k)):
                answers[index] = answer
        return answers

    def __call__(self, batch) -> dict[str, list]:
        items = _batch_items(batch)
        rows = [row_of("", answer) for answer in self.answers(items)]
        columns = {column: [row[column] for row in rows] for column in COLUMNS if column != "path"}
        table = batch if isinstance(batch, dict) or hasattr(batch, "columns") else {}
        if "path" in table:  # Ray's read_binary_files(include_paths=True), a Dask or pandas frame of paths
            columns = {"path": list(table["path"]), **columns}
        return columns


def _batch_items(batch) -> list:
    if isinstance(batch, dict):
        column = next((name for name in ("bytes", "image", "path") if name in batch), None)
        if column is None:
            raise UsageError(f"a batch needs a 'bytes', 'image' or 'path' column, not {', '.join(map(str, batch))}")
        return list(batch[column])
    if hasattr(batch, "columns"):  # a pandas DataFrame
        return _batch_items({name: batch[name] for name in batch.columns})
    return list(batch)


class PartWriter:
    """Rows written as numbered part files in ``OUTPUT.parts/``, then joined into OUTPUT."""

    def __init__(self, output: str | Path, resume: bool):
        self.output = Path(output)
        self.format = next((suffix for suffix in OUTPUT_FORMATS if self.output.name.lower().endswith(suffix)), None)
        if self.format is None:
            raise UsageError(f"--output {output}: name a .parquet, .csv or .jsonl file")
        self.part_format = ".jsonl" if self.format == ".parquet" else self.format  # see the module docstring
        self.parts = self.output.with_name(self.output.name + ".parts")
        if self.parts.exists() and not resume:
            raise UsageError(f"{self.parts}: an unfinished run's rows are there; add --resume to go on from them "
                             "(or delete the folder to start again)")  # fmt: skip
        if self.output.exists() and not resume:
            raise UsageError(f"{self.output}: already exists; nothing is overwritten (choose another --output)")
        if self.format == ".parquet":
            _pyarrow()
        check_can_write(self.output)  # before any work; the parts folder comes with the first part
        self.count = len(list(self.parts.glob("part-*")))

    def done(self) -> set[str]:
        """The paths the parts written so far hold."""
        paths: set[str] = set()
        for part in sorted(self.parts.glob("part-*")):
            paths.update(row["path"] for row in _read_part(part))
        return paths

    def write(self, rows: list[dict]) -> None:
        if rows:
            atomic_write_bytes(self.parts / f"part-{self.count:06d}{self.part_format}", _encode(rows, self.part_format))
            self.count += 1

    def finish(self) -> Path:
        """Join the parts into OUTPUT (atomically, streamed part by part) and remove them."""
        parts = sorted(self.parts.glob("part-*"))
        if self.format == ".parquet":
            atomic_write_with(self.output, lambda temporary: _join_parquet(parts, temporary))
        else:
            atomic_write_with(self.output, lambda temporary: _join_text(parts, temporary, self.format))
        if self.parts.exists():  # no images to predict: no part was written
            shutil.rmtree(self.parts)
        return self.output


ROW_GROUP_ROWS = 16_384  # rows joined into one Parquet row group: the most held at a time (about 5 MB)


def _join_parquet(parts: list[Path], temporary: str) -> None:
    pyarrow, parquet = _pyarrow()
    schema = _schema()
    with parquet.ParquetWriter(temporary, schema) as writer:
        waiting, rows = [], 0
        for index, part in enumerate(parts):
            waiting.append(_part_table(part))
            rows += waiting[-1].num_rows
            if rows >= ROW_GROUP_ROWS or index == len(parts) - 1:
                writer.write_table(pyarrow.concat_tables(waiting).cast(schema))
                waiting, rows = [], 0


def _join_text(parts: list[Path], temporary: str, suffix: str) -> None:
    header = _encode([], suffix)  # CSV parts each start with the header; the output has it once
    with open(temporary, "wb") as file:
        file.write(header)
        for part in parts:
            file.write(part.read_bytes()[len(header) :])


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet as parquet
    except ImportError:
        raise UsageError(
            "Parquet output needs pyarrow: pip install 'imgclf[parquet]' (or write .csv or .jsonl)"
        ) from None
    return pyarrow, parquet


def _schema():
    pyarrow, _ = _pyarrow()
    types = {"probability": pyarrow.float64()}
    return pyarrow.schema([(column, types.get(column, pyarrow.string())) for column in COLUMNS])


def _encode(rows: list[dict], suffix: str) -> bytes:
    """A part's bytes: JSON lines, or CSV with its header."""
    if suffix == ".jsonl":
        return "".join(json.dumps(row) + "\n" for row in rows).encode("utf-8")
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode("utf-8")


def _part_table(part: Path):
    """One part as an Arrow table: JSON lines through pyarrow's reader (one block: rows never
    straddle two), or a Parquet part an earlier version wrote."""
    _, parquet = _pyarrow()
    if part.suffix == ".parquet":
        return parquet.ParquetFile(part).read()  # not read_table: its dataset layer imports pandas
    from pyarrow import json as arrow_json

    options = arrow_json.ParseOptions(explicit_schema=_schema(), unexpected_field_behavior="ignore")
    # One block has nothing for threads to share, and each thread's allocator keeps memory.
    reading = arrow_json.ReadOptions(block_size=part.stat().st_size + 1, use_threads=False)
    return arrow_json.read_json(part, read_options=reading, parse_options=options)


def _read_part(part: Path) -> list[dict]:
    suffix = part.suffix
    if suffix == ".parquet":
        _, parquet = _pyarrow()
        return parquet.ParquetFile(part).read(columns=["path"]).to_pylist()
    if suffix == ".jsonl":
        return [json.loads(line) for line in part.read_text(encoding="utf-8").splitlines() if line]
    return list(csv.DictReader(io.StringIO(part.read_text(encoding="utf-8"))))
