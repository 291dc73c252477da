"""fedbus-torch: train any ``torch.nn.Module`` as a fedbus plugin.

Modules: ``state`` (state_dict ↔ the plugin API's weights: names, order, dtypes, copies),
``runtime`` (device and threads), ``options`` (the ``[plugin.options]`` every torch plugin
takes), ``loops`` (one local training pass, one evaluation), ``plugin`` (``TorchTask``, the
``TorchPlugin`` and ``torch_plugin`` that makes the entry-point factory), ``export`` (ONNX
through ``torch.onnx``), and ``examples.digits_cnn`` (the first-party ``digits-cnn``).
"""

from fedbus_torch.plugin import TorchPlugin, TorchTask, torch_plugin
from fedbus_torch.state import StateLayout

__all__ = ["StateLayout", "TorchPlugin", "TorchTask", "torch_plugin"]
