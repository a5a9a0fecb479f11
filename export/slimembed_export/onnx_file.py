"""What every ONNX file the export writes shares: its opset, and the size past which its
weights go to an external data file (protobuf caps a message at 2 GB). Torch-free, so the
quantization step and the fused decoder builder can import it without PyTorch."""

# A graph over this many bytes of weights is written with external data.
EXTERNAL_DATA_BYTES = 1_800_000_000
OPSET = 20
