"""Serving: ``engines`` know models (a bundle or an ONNX file) and not HTTP; ``app`` knows HTTP
and not models."""
