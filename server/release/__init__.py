"""The release pipeline: export to ONNX, check against torch, sign, register, publish."""
