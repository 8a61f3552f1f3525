"""Inference: the Translator, tiled and memory-bounded passes, model files, ONNX export and backends."""
