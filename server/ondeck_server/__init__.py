"""ondeck's data plane: the model pipeline (`ondeck-server convert`) and the inference
server (`ondeck-server serve`). Knows nothing about Kubernetes."""

__version__ = "0.1.0"
