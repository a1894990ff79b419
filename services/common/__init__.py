"""Pieces shared by every llmsvc service: config, logging, gRPC and metrics helpers."""
