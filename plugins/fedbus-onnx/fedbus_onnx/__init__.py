"""fedbus-onnx: the ``onnx`` fedbus plugin, federated evaluation of an ONNX classifier."""
