"""Building the backend a `ServerConfig` asks for (hf, openai, visualglm); heavy imports happen here, lazily."""

from __future__ import annotations

from pathlib import Path

from model_server.backends.base import Backend
from model_server.config import ConfigError, ServerConfig, torch_threads_for


def model_dir(config: ServerConfig) -> Path:
    """The checkpoint to serve: the configured one, else the promoted checkpoint or the committed default."""
    if config.model is not None:
        return config.model
    try:
        from finetune.checkpoints import serving_model_dir
    except ImportError as exc:
        raise ConfigError(f"no model given (--model / DEFECT_GLM_MODEL) and the checkpoint registry is unavailable: {exc}") from exc
    return Path(serving_model_dir())


def use_torch_threads(config: ServerConfig) -> int | None:
    """Set this process's torch CPU threads for serving (`config.torch_threads`, see
    `model_server.config.torch_threads_for`); the serving commands call it once at startup. Returns the
    count, or None when no model runs in this process: the openai backend, or a model in a process of its
    own (`model_process`), which sets its threads there (torch is then not even imported here)."""
    if config.backend == "openai" or config.model_process:
        return None
    import torch

    threads = torch_threads_for(config)
    torch.set_num_threads(threads)
    return threads


def create_backend(config: ServerConfig) -> Backend:
    """The configured backend, ready to answer (slow: loads a model or contacts the engine).

    With `config.model_process` (the default) a model of this machine (hf, visualglm) is loaded and
    run in a process of its own (`model_server.model_process`); otherwise in this process. Raises
    ConfigError/ValueError, or BackendError when the model process cannot load the model.
    """
    if config.model_process and config.backend != "openai":
        from model_server.model_process import ModelProcess

        return ModelProcess(config)
    return load_backend(config)


def load_backend(config: ServerConfig) -> Backend:
    """Load the configured backend in this process. Raises ConfigError/ValueError."""
    if config.backend == "openai":
        from model_server.backends.openai_compat import OpenAIBackend

        assert config.openai_url is not None
        return OpenAIBackend(config.openai_url, config.openai_model, config.openai_api_key, config.openai_timeout_s)
    directory = model_dir(config)
    if config.backend == "visualglm":
        from model_server.backends.visualglm import VisualGLMBackend

        return VisualGLMBackend(directory, config.adapter, dtype=config.dtype, quantization=config.quantization,
                                device=config.device)
    from model_server.backends.hf import HFBackend

    return HFBackend(directory, config.adapter, dtype=config.dtype, quantization=config.quantization,
                     device=config.device, views=config.views, views_below=config.views_below)
