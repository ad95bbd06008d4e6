"""The README's recipes for Ray Data, Spark and Dask, run in local mode on 1,000 images: the same
labels as ``imgclf predict --output`` in one process. Marker ``engines``: ``make test-engines``
installs the engines (and Java for Spark) and runs these; ``make test`` leaves them out."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

import imgclf
from imgclf.cli.main import main
from serving import digit_png

pytestmark = pytest.mark.engines

IMAGES = 1000


@pytest.fixture(scope="module")
def thousand(tmp_path_factory, digits_bundle) -> dict:
    """1,000 digit PNGs, the digits bundle exported to ONNX, and the single-process labels."""
    root = tmp_path_factory.mktemp("thousand")
    for index in range(IMAGES):
        data, label = digit_png(index)
        (root / "images" / label).mkdir(parents=True, exist_ok=True)
        (root / "images" / label / f"{index:04d}.png").write_bytes(data)
    model = root / "digits.onnx"
    assert main(["export", str(digits_bundle), "--output", str(model)]) == 0
    assert main(["predict", str(model), str(root / "images"), "--output", str(root / "one.parquet")]) == 0
    import pyarrow.parquet as parquet

    rows = parquet.read_table(root / "one.parquet").to_pylist()
    return {"images": root / "images", "model": model, "labels": {_key(row["path"]): row["label"] for row in rows}}


def _label(value) -> str | None:
    """A label as the engines give it back: pandas shows an abstained (missing) label as NA."""
    return value if isinstance(value, str) else None


def _key(path: str) -> str:
    """The last two parts of a path (engines report paths their own way)."""
    return "/".join(Path(path).parts[-2:])


def test_ray_data_map_batches_gives_the_single_process_labels(thousand):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        images = ray.data.read_binary_files(str(thousand["images"]), include_paths=True)
        # Two workers, each loading the model once; half a CPU each leaves room for the reading tasks
        # (with a whole CPU each, two workers on two CPUs starve the reads and the job waits forever).
        predictions = images.map_batches(imgclf.Predictor, fn_constructor_args=(str(thousand["model"]),),
                                         batch_size=64, concurrency=2, num_cpus=0.5)  # fmt: skip
        frame = predictions.to_pandas()
    finally:
        ray.shutdown()
    assert len(frame) == IMAGES
    assert {_key(path): _label(label) for path, label in zip(frame["path"], frame["label"])} == thousand["labels"]


def test_spark_predict_batch_udf_gives_the_single_process_labels(thousand):
    pytest.importorskip("pyspark")
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import SparkSession
    from pyspark.sql.types import DoubleType, StringType, StructField, StructType

    model = str(thousand["model"])

    def make_predict_fn():
        predictor = imgclf.Predictor(model)  # once per Python worker

        def predict(paths: np.ndarray) -> dict[str, np.ndarray]:
            columns = predictor(list(paths))
            return {name: np.array(columns[name], dtype=object) for name in ("label", "probability", "error")}

        return predict

    schema = StructType([StructField("label", StringType()), StructField("probability", DoubleType()),
                         StructField("error", StringType())])  # fmt: skip
    classify = predict_batch_udf(make_predict_fn, return_type=schema, batch_size=64)
    # The workers run this interpreter (the one imgclf is installed in), not the first python3 on PATH.
    os.environ["PYSPARK_PYTHON"] = sys.executable
    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
    try:
        paths = [(str(path),) for path in sorted(thousand["images"].rglob("*.png"))]
        frame = spark.createDataFrame(paths, ["path"]).withColumn("prediction", classify("path"))
        rows = frame.select("path", "prediction.label").collect()
    finally:
        spark.stop()
    assert len(rows) == IMAGES
    assert {_key(row["path"]): _label(row["label"]) for row in rows} == thousand["labels"]


def test_dask_map_partitions_gives_the_single_process_labels(thousand):
    dataframe = pytest.importorskip("dask.dataframe")
    import dask
    import pandas

    predictor = imgclf.Predictor(thousand["model"])
    paths = pandas.DataFrame({"path": [str(path) for path in sorted(thousand["images"].rglob("*.png"))]})
    meta = pandas.DataFrame({"path": pandas.Series(dtype=str), "label": pandas.Series(dtype=object)})
    predictions = dataframe.from_pandas(paths, npartitions=4).map_partitions(
        lambda part: pandas.DataFrame(predictor(part))[["path", "label"]], meta=meta
    )
    with dask.config.set(scheduler="processes", num_workers=2):  # the predictor travels pickled
        frame = predictions.compute()
    assert len(frame) == IMAGES
    assert {_key(path): _label(label) for path, label in zip(frame["path"], frame["label"])} == thousand["labels"]
