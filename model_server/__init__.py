"""The inference server: HTTP API, model backends, per-thread conversation memory."""
