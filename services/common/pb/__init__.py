"""Generated from protos/llmsvc/v1 by services.common.protogen. Do not edit."""
