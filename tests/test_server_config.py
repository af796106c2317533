"""Server settings (model_server.config): every option by environment variable and by flag, in one table.

Checks that each option has an environment variable that is actually read, that flags win over
the environment, that bad values are refused naming the variable or flag, that the defaults are
safe (127.0.0.1, 10 MB images), and that docs/server.md and the module docstring carry the table
generated from `OPTIONS` (so the documentation cannot drift from the code).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from model_server import config as config_module
from model_server.backends.registry import use_torch_threads
from model_server.cli import register
from model_server.config import OPTIONS, ConfigError, ServerConfig, describe, options_table, torch_threads_for

REPO = Path(__file__).resolve().parents[1]

#: A valid non-default raw value for each option, and the parsed value expected.
SAMPLES: dict[str, tuple[str, object]] = {
    "host": ("0.0.0.0", "0.0.0.0"),
    "port": ("9123", 9123),
    "backend": ("hf", "hf"),
    "model": ("/models/m", Path("/models/m")),
    "adapter": ("/models/a", Path("/models/a")),
    "dtype": ("bfloat16", "bfloat16"),
    "quantization": ("4bit", "4bit"),
    "device": ("cpu", "cpu"),
    "views": ("4", 4),
    "views_below": ("0.9", 0.9),
    "openai_url": ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    "openai_model": ("served", "served"),
    "openai_api_key": ("k", "k"),
    "openai_timeout_s": ("7.5", 7.5),
    "db": ("/tmp/x.sqlite", Path("/tmp/x.sqlite")),
    "admin_token": ("tok", "tok"),
    "max_batch_size": ("3", 3),
    "max_wait_ms": ("2.5", 2.5),
    "max_queue": ("9", 9),
    "image_readers": ("2", 2),
    "torch_threads": ("3", 3),
    "model_process": ("no", False),
    "request_timeout_s": ("11", 11.0),
    "max_image_bytes": ("1_000_000", 1_000_000),
    "max_image_pixels": ("123456", 123456),
    "image_formats": ("png, jpg", ("PNG", "JPEG")),
    "max_text_chars": ("77", 77),
    "max_new_tokens": ("12", 12),
    "max_history_turns": ("0", 0),
    "max_stored_turns": ("5", 5),
    "thread_ttl_s": ("0", 0.0),
    "idempotency_ttl_s": ("600", 600.0),
    "max_threads": ("4", 4),
    "web_dir": ("/srv/web", Path("/srv/web")),
    "log_level": ("debug", "DEBUG"),
}


def test_every_option_is_read_from_its_environment_variable():
    assert set(SAMPLES) == {o.name for o in OPTIONS}
    environ = {o.env: SAMPLES[o.name][0] for o in OPTIONS}
    cfg = ServerConfig.from_env(environ)
    for opt in OPTIONS:
        assert getattr(cfg, opt.name) == SAMPLES[opt.name][1], opt.name
        assert opt.env == "DEFECT_GLM_" + opt.name.upper()


def test_flags_override_the_environment_and_the_defaults_are_safe():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--model", "/m", "--adapter", "/a", "--host", "::1", "--port", "0",
                              "--db", "/tmp/f.sqlite", "--max-batch-size", "2"])
    cfg = config_module.from_args(args, {"DEFECT_GLM_PORT": "9999", "DEFECT_GLM_MAX_QUEUE": "3",
                                         "DEFECT_GLM_MAX_BATCH_SIZE": "8"})
    assert (cfg.model, cfg.adapter, cfg.host, cfg.port, cfg.db) == (Path("/m"), Path("/a"), "::1", 0,
                                                                    Path("/tmp/f.sqlite"))
    assert cfg.max_batch_size == 2 and cfg.max_queue == 3  # flag beats env; env beats default
    for opt in OPTIONS:  # every option is a flag of `defect-glm serve`
        assert opt.flag in parser._subparsers._group_actions[0].choices["serve"].format_help(), opt.flag

    default = ServerConfig.from_env({})
    assert default.host == "127.0.0.1" and default.max_image_bytes == 10 * 1024 * 1024
    assert default.image_formats == ("PNG", "JPEG", "GIF", "WEBP", "BMP")
    assert default.admin_token is None  # reload is off unless a token is set
    assert default.dtype == "auto" and default.model_process is True


@pytest.mark.parametrize(("environ", "needle"), [
    ({"DEFECT_GLM_PORT": "eighty"}, "DEFECT_GLM_PORT"),
    ({"DEFECT_GLM_DTYPE": "int3"}, "DEFECT_GLM_DTYPE"),
    ({"DEFECT_GLM_MAX_BATCH_SIZE": "0"}, "max_batch_size"),
    ({"DEFECT_GLM_IMAGE_READERS": "0"}, "image_readers"),
    ({"DEFECT_GLM_TORCH_THREADS": "-1"}, "torch_threads"),
    ({"DEFECT_GLM_MODEL_PROCESS": "maybe"}, "DEFECT_GLM_MODEL_PROCESS"),
    ({"DEFECT_GLM_IMAGE_FORMATS": "PNG,TIFF"}, "TIFF"),
    ({"DEFECT_GLM_BACKEND": "openai"}, "openai_url"),
    ({"DEFECT_GLM_OPENAI_URL": "ftp://x"}, "openai_url"),
    ({"DEFECT_GLM_VIEWS": "3"}, "views: answer views must be one of 1, 4, 8; got 3"),
    ({"DEFECT_GLM_VIEWS": "4", "DEFECT_GLM_BACKEND": "visualglm"}, "views is a setting of the hf backend"),
    ({"DEFECT_GLM_VIEWS_BELOW": "1.5"}, "views_below: the sureness under which other views are asked must be in (0, 1], got 1.5"),
])
def test_bad_values_are_refused_by_name(environ, needle):
    with pytest.raises(ConfigError) as err:
        ServerConfig.from_env(environ)
    assert needle in str(err.value)


def test_the_model_gets_the_cores_left_after_the_event_loop_and_the_image_readers():
    assert torch_threads_for(ServerConfig(), cores=2) == 1  # a 2-core box: one core for the model
    assert torch_threads_for(ServerConfig(), cores=16) == 14
    assert torch_threads_for(ServerConfig(image_readers=3), cores=4) == 1
    assert torch_threads_for(ServerConfig(torch_threads=6), cores=2) == 6  # set: taken as given


def test_serving_sets_the_torch_threads_the_openai_backend_and_a_model_process_leave_them():
    import torch

    before = torch.get_num_threads()
    try:
        assert use_torch_threads(ServerConfig(torch_threads=1, model_process=False)) == 1
        assert torch.get_num_threads() == 1
        torch.set_num_threads(before)
        assert use_torch_threads(ServerConfig(backend="openai", openai_url="http://127.0.0.1:1/v1")) is None
        assert use_torch_threads(ServerConfig(torch_threads=1)) is None  # the model process sets its own
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


def test_secrets_are_masked_when_settings_are_logged():
    shown = describe(ServerConfig(admin_token="hunter2", openai_api_key="sk-1"))
    assert shown["admin_token"] == "***" and shown["openai_api_key"] == "***"
    assert "hunter2" not in str(shown)


def test_the_documented_table_is_the_generated_one():
    table = options_table()
    assert table in (REPO / "docs" / "server.md").read_text(encoding="utf-8")
    assert table in (config_module.__doc__ or "")
