"""Inference worker: one vLLM engine behind the ``llmsvc.v1.Inference`` gRPC service."""
