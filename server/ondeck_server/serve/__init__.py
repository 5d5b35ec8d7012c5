"""The model server: HTTP (V2 + V1), codecs, the ONNX Runtime seam, dynamic batching,
limits, metrics, auth and the process lifecycle. Never imports `ondeck_server.convert`."""
