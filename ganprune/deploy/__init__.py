"""Stage 5: what ships: BatchNorm folding, checked ONNX export, and the edge runtimes that run it."""
