"""The Kubernetes API as an object source, and the option glue for the commands."""

from netplane.kube.options import SourceChoiceError, api_client, source_from_options, source_options

__all__ = ["SourceChoiceError", "api_client", "source_from_options", "source_options"]
