"""An ONNX model that takes raw uint8 pixels: preprocessing graph + network + calibrated softmax.

The graph a user runs with nothing but onnxruntime:

    pixels (uint8, N x H x W x C or N x C x H x W, any H and W)
      -> Cast float -> [Transpose to NCHW]
      -> Resize: shorter side to S (long side truncated), bilinear, antialiased
      -> centre crop S x S (torchvision's offsets)
      -> (x - 255 mean) / (255 std)
      -> the network -> logits, and probabilities = softmax(logits / temperature)

Resize with antialias needs opset 18. An image
already S x S passes the resize unchanged, so on pre-sized images the graph matches imgclf's own
preprocessing exactly; on other sizes ONNX's antialiased bilinear filter stands in for Pillow's
(close, not bit-identical).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings

import numpy as np
import onnx
import torch
from onnx import TensorProto, compose, helper, numpy_helper

from imgclf.data.prepare import Preprocess

__all__ = ["OPSET", "add_contract", "network_proto", "preprocessing_graph", "with_preprocessing"]

OPSET = 18
PIXELS, NORMALIZED, LOGITS, PROBABILITIES = "pixels", "normalized", "logits", "probabilities"
DISTANCE = "centroid_distance"  # optional output: the embedding's distance to its class centroid


def _constant(name: str, values, dtype) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=dtype), name)


def _round_to_uint8_nodes(source: str, target: str) -> list[onnx.NodeProto]:
    """floor(x + 0.5) clipped to 0..255: Pillow's rounding of a resampled pass back to uint8."""
    return [
        helper.make_node("Add", [source, "half"], [f"{source}_plus_half"]),
        helper.make_node("Floor", [f"{source}_plus_half"], [f"{source}_floor"]),
        helper.make_node("Clip", [f"{source}_floor", "pixel_min", "pixel_max"], [target]),
    ]


def _resize_and_crop_nodes(source: str, resize_to: int, size: int) -> list[onnx.NodeProto]:
    """Shorter side to ``resize_to`` (long side truncated, as torchvision and imgclf do), bilinear
    and antialiased, then the centre ``size`` square at torchvision's offsets (round half to even).
    Sizes are computed in the graph: Resize gets all four output sizes, no ``axes`` attribute
    (onnxruntime's full optimization mishandles Resize with axes in quantized graphs)."""
    node = helper.make_node
    return [
        node("Shape", [source], ["shape"]),
        node("Slice", ["shape", "zero", "two"], ["batch_and_channels"]),
        node("Slice", ["shape", "two", "four"], ["height_width"]),
        node("Cast", ["height_width"], ["height_width_float"], to=TensorProto.FLOAT),
        node("ReduceMin", ["height_width_float"], ["shorter_side"], keepdims=1),
        # size x resize_to / shorter, multiplied first: exact for the shorter side in float32
        node("Mul", ["height_width_float", "resize_to"], ["scaled_up"]),
        node("Div", ["scaled_up", "shorter_side"], ["new_size_float"]),
        node("Floor", ["new_size_float"], ["new_size_floor"]),
        node("Cast", ["new_size_floor"], ["new_size"], to=TensorProto.INT64),
        # Pillow resizes horizontally, then vertically, rounding to uint8 after each pass; doing the
        # same makes the graph's pixels equal to imgclf's (measured: 0 of 196,608 values differ on
        # CIFAR-10 images upscaled to 256 px; without the rounding, 5% of top-1 labels changed).
        node("Slice", ["height_width", "zero", "one"], ["height"]),
        node("Slice", ["new_size", "one", "two"], ["new_width"]),
        node("Concat", ["batch_and_channels", "height", "new_width"], ["sizes_width"], axis=0),
        node(
            "Resize",
            [source, "", "", "sizes_width"],
            ["wide"],
            mode="linear",
            antialias=1,
            coordinate_transformation_mode="half_pixel",
        ),  # fmt: skip
        *_round_to_uint8_nodes("wide", "wide_rounded"),
        node("Concat", ["batch_and_channels", "new_size"], ["sizes"], axis=0),
        node(
            "Resize",
            ["wide_rounded", "", "", "sizes"],
            ["resized_float"],
            mode="linear",
            antialias=1,
            coordinate_transformation_mode="half_pixel",
        ),  # fmt: skip
        *_round_to_uint8_nodes("resized_float", "resized"),
        node("Sub", ["new_size_floor", "crop_float"], ["margin"]),
        node("Div", ["margin", "two_float"], ["half_margin"]),
        node("Round", ["half_margin"], ["start_float"]),
        node("Cast", ["start_float"], ["start"], to=TensorProto.INT64),
        node("Add", ["start", "crop"], ["end"]),
        node("Slice", ["resized", "start", "end", "height_width_axes"], ["cropped"]),
    ]


def preprocessing_graph(preprocess: Preprocess, layout: str, ir_version: int, resize: bool = True) -> onnx.ModelProto:
    """uint8 pixels in ``layout`` ("nhwc" or "nchw") -> normalized float NCHW at the input size.
    ``resize=False``: the pixels must arrive at the input size (the caller resized and cropped)."""
    size, channels = preprocess.input_size, preprocess.channels
    height, width = ("height", "width") if resize else (size, size)
    shape = ["batch", height, width, channels] if layout == "nhwc" else ["batch", channels, height, width]
    mean = np.array(preprocess.mean, dtype=np.float32).reshape(1, -1, 1, 1) * 255.0
    std = np.array(preprocess.std, dtype=np.float32).reshape(1, -1, 1, 1) * 255.0
    initializers = [
        _constant("zero", [0], np.int64),
        _constant("one", [1], np.int64),
        _constant("half", 0.5, np.float32),
        _constant("pixel_min", 0.0, np.float32),
        _constant("pixel_max", 255.0, np.float32),
        _constant("two", [2], np.int64),
        _constant("four", [4], np.int64),
        _constant("height_width_axes", [2, 3], np.int64),
        _constant("resize_to", [preprocess.decode_side], np.float32),
        _constant("crop", [size, size], np.int64),
        _constant("crop_float", [size, size], np.float32),
        _constant("two_float", [2.0], np.float32),
        numpy_helper.from_array(mean, "mean_255"),
        numpy_helper.from_array(std, "std_255"),
    ]
    nodes = [helper.make_node("Cast", [PIXELS], ["as_float"], to=TensorProto.FLOAT)]
    source = "as_float"
    if layout == "nhwc":
        nodes.append(helper.make_node("Transpose", [source], ["nchw"], perm=[0, 3, 1, 2]))
        source = "nchw"
    if resize:
        nodes += _resize_and_crop_nodes(source, size, size)
    else:
        nodes.append(helper.make_node("Identity", [source], ["cropped"]))
    nodes += [
        helper.make_node("Sub", ["cropped", "mean_255"], ["centred"]),
        helper.make_node("Div", ["centred", "std_255"], [NORMALIZED]),
    ]
    graph = helper.make_graph(
        nodes,
        "imgclf_preprocess",
        [helper.make_tensor_value_info(PIXELS, TensorProto.UINT8, shape)],
        [helper.make_tensor_value_info(NORMALIZED, TensorProto.FLOAT, ["batch", channels, size, size])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = ir_version
    return model


def _with_probabilities(network: onnx.ModelProto, temperature: float | list[float]) -> onnx.ModelProto:
    """A copy of the network with its output named ``logits`` and calibrated ``probabilities`` added:
    softmax(logits / T), or for a multi-label model (a list, one T per label) sigmoid(logits / T)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(network)
    network = copy
    graph = network.graph
    renames = {graph.output[0].name: LOGITS}
    if len(graph.output) > 1:  # the network also gives each image's distance to its class centroid
        renames[graph.output[1].name] = DISTANCE
    for node in graph.node:  # the distance reads the logits (their argmax): inputs are renamed too
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for output in graph.output:
        output.name = renames.get(output.name, output.name)
    graph.initializer.append(numpy_helper.from_array(np.array(temperature, dtype=np.float32), "temperature"))
    graph.node.append(helper.make_node("Div", [LOGITS, "temperature"], ["scaled_logits"]))
    if isinstance(temperature, list):  # multi-label: each label's own probability
        graph.node.append(helper.make_node("Sigmoid", ["scaled_logits"], [PROBABILITIES]))
    else:
        graph.node.append(helper.make_node("Softmax", ["scaled_logits"], [PROBABILITIES], axis=1))
    classes = graph.output[0].type.tensor_type.shape.dim[1].dim_value or None
    graph.output.append(helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["batch", classes]))
    return network


def with_preprocessing(
    network: onnx.ModelProto, preprocess: Preprocess, layout: str, temperature: float | list[float],
    resize: bool = True,
) -> onnx.ModelProto:  # fmt: skip
    """The whole graph: pixels in, logits and probabilities out (``temperature``: one, or a list
    of one per label for a multi-label model's sigmoids; ``resize``: see ``preprocessing_graph``)."""
    network = _with_probabilities(network, temperature)
    pre = preprocessing_graph(preprocess, layout, network.ir_version, resize)
    merged = compose.merge_models(pre, network, io_map=[(NORMALIZED, network.graph.input[0].name)])
    onnx.checker.check_model(merged)
    return merged


def add_contract(model: onnx.ModelProto, contract: dict) -> None:
    """Class names and the input contract as metadata: everything a caller needs to feed it."""
    for key, value in contract.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"imgclf.{key}", json.dumps(value)


def network_proto(model: torch.nn.Module, channels: int, size: int) -> onnx.ModelProto:
    """The network alone, float NCHW in, dynamic batch, via PyTorch's exporter (torch.export)."""
    model = model.eval()
    example = torch.zeros(2, channels, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's progress notes and deprecation chatter
        program = torch.onnx.export(
            model, (example,), dynamo=True, opset_version=OPSET, dynamic_shapes=({0: batch},), verbose=False
        )
    return program.model_proto
