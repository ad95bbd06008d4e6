"""Models that leave imgclf: ONNX files that carry their preprocessing, checked against PyTorch."""
