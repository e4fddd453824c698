"""ONNX export, parity checks, quantization and TorchServe archiving."""
