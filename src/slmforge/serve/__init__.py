"""The inference server: OpenAI-compatible endpoints over one local engine, deployments."""
