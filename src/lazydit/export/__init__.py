"""Torch side of frozen-schedule deployment: gate files frozen into skip-schedule files (`freeze`), the
model cut into the pieces a schedule switches between (`parts`), their ONNX export (`onnx_export`),
compiled frozen sampling (`compiled`) and the deployment benchmark (`bench`). The torch-free
runtime lives in `lazydit.deploy`."""
