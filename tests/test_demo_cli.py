"""`defect-glm demo` and `defect-glm chat` as users run them: real subprocesses, a real tiny model.

The demo serves the page, the samples and the thread API on a free port and stops cleanly on
Ctrl-C (SIGINT); a busy port or a missing model is a one-line error. The chat keeps thread
memory across piped follow-ups (in-process model, or a running server with --server), ends at
end of input, and reports a non-wafer image or an unreachable server clearly.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_server import wire
from model_server.chat_cli import ANSWER_PREFIX, format_findings
from model_server.findings import build_findings

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "model_server" / "web" / "static" / "samples"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_demo_web import WAIT_S, DemoProcess, demo_env  # noqa: E402  (the demo-process helper both files use)

pytestmark = pytest.mark.timeout(2 * WAIT_S + 60)


def run_cli(args: list[str], home: Path, stdin: str = "", timeout: float = WAIT_S,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "defect_glm", *args], cwd=ROOT, env=env or demo_env(home),
                          input=stdin, capture_output=True, text=True, timeout=timeout)


def post_sample(url: str, thread_id: str, sample: Path, text: str = "What defects does this wafer show?") -> dict:
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\n{text}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{sample.name}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + sample.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{url}/v1/threads/{thread_id}/messages", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def non_wafer_png(path: Path) -> Path:
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, size=(90, 120, 3), dtype=np.uint8), "RGB").save(path)
    return path


@pytest.fixture(scope="module")
def demo(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("demo-cli-home")
    process = DemoProcess(["--port", "0", "--model", str(tiny_model_dir), "--db", str(home / "threads.sqlite")],
                          demo_env(home))
    process.url = process.wait_for(r"open (http://127\.0\.0\.1:\d+)").group(1)
    process.wait_for(r"^Model ready")
    yield process
    process.stop()


# ---------------------------------------------------------------- demo
def test_demo_serves_page_samples_and_thread_api(demo):
    with urllib.request.urlopen(demo.url + "/", timeout=30) as response:
        page = response.read().decode("utf-8")
    assert "<title>" in page and "/static/app.js" in page
    samples = get_json(demo.url + "/static/samples/samples.json")["samples"]
    assert len(samples) >= 5 and len({s["class"] for s in samples}) == len(samples)
    assert any("Sample wafer maps on the page" in line for line in demo.seen)
    reply = post_sample(demo.url, "demo-cli-1", SAMPLES / samples[0]["file"])
    assert reply["findings"]["measured"]["failing"] == samples[0]["failing"]
    assert reply["answer"].strip()


def test_ctrl_c_stops_the_demo_cleanly(tiny_model_dir, tmp_path):
    process = DemoProcess(["--port", "0", "--model", str(tiny_model_dir), "--db", str(tmp_path / "t.sqlite")],
                          demo_env(tmp_path))
    url = process.wait_for(r"open (http://127\.0\.0\.1:\d+)").group(1)
    process.wait_for(r"^Model ready")
    post_sample(url, "ctrl-c", SAMPLES / "center.png")
    process.proc.send_signal(signal.SIGINT)
    assert process.proc.wait(timeout=WAIT_S) == 0
    process.wait_for(r"^Stopped\.")
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    with socket.socket() as again:  # the port is free for the next `defect-glm demo --port PORT`
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen(1)


def test_demo_on_a_busy_port_says_so(tiny_model_dir, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_cli(["demo", "--port", str(port), "--model", str(tiny_model_dir)], tmp_path)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "--port" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_with_a_missing_model_says_so(tmp_path):
    result = run_cli(["demo", "--port", "0", "--model", str(tmp_path / "nope")], tmp_path)
    assert result.returncode == 2
    assert "no such checkpoint directory" in result.stderr and "Traceback" not in result.stderr


def test_demo_and_chat_without_the_default_model_say_what_to_do(tmp_path):
    """A fresh checkout whose finetune/default_model is missing: one clear line, no traceback, nothing served."""
    env = demo_env(tmp_path)
    env["DEFECT_GLM_DEFAULT_MODEL"] = str(tmp_path / "default_model")  # absent, nothing promoted in this home
    for args in (["demo", "--port", "0"], ["chat", str(SAMPLES / "loc.png")]):
        result = run_cli(args, tmp_path, env=env)
        assert result.returncode == 2, result.stderr
        assert "no model to serve" in result.stderr and str(tmp_path / "default_model") in result.stderr
        assert "--model DIR" in result.stderr and "Traceback" not in result.stderr
        assert "open http" not in result.stdout


# ---------------------------------------------------------------- chat
def test_chat_in_process_keeps_thread_memory_until_end_of_input(tiny_model_dir, tmp_path):
    db = tmp_path / "chat.sqlite"
    result = run_cli(
        ["chat", str(SAMPLES / "donut.png"), "--model", str(tiny_model_dir), "--db", str(db), "--thread", "cli-t1",
         "--question", "Which patterns are on this wafer?"],
        tmp_path, stdin="What could cause it?\n\n这是什么原因？\n",
    )
    assert result.returncode == 0, result.stderr
    answers = [line for line in result.stdout.splitlines() if line.startswith(ANSWER_PREFIX)]
    assert len(answers) == 3
    assert "you> Which patterns are on this wafer?" in result.stdout
    assert "measured: 2061 dies" in result.stdout  # the donut sample's die count, from the map as read
    from model_server.memory import ThreadMemory

    memory = ThreadMemory(db)
    try:
        thread = memory.get("cli-t1")
    finally:
        memory.close()
    assert thread is not None
    assert [t.text for t in thread.turns if t.role == "user"] == [
        "Which patterns are on this wafer?", "What could cause it?", "这是什么原因？"]
    assert [t.role for t in thread.turns] == ["user", "assistant"] * 3


def test_chat_with_server_uses_the_same_thread(demo, tmp_path):
    result = run_cli(["chat", str(SAMPLES / "edgering.png"), "--server", demo.url, "--thread", "cli-t2"],
                     tmp_path, stdin="And the yield?\n")
    assert result.returncode == 0, result.stderr
    view = get_json(demo.url + "/v1/threads/cli-t2")
    assert [t["text"] for t in view["turns"] if t["role"] == "user"] == [
        "What defects does this wafer show?", "And the yield?"]
    answers = [line.removeprefix(ANSWER_PREFIX) for line in result.stdout.splitlines() if line.startswith(ANSWER_PREFIX)]
    assert answers == [t["text"].splitlines()[0] for t in view["turns"] if t["role"] == "assistant"]


def test_chat_refuses_a_non_wafer_image(demo, tmp_path):
    result = run_cli(["chat", str(non_wafer_png(tmp_path / "cat.png")), "--server", demo.url], tmp_path)
    assert result.returncode == 2
    assert "422 not_a_wafer_map" in result.stderr and "Traceback" not in result.stderr


def test_chat_reports_an_unreachable_server_and_a_missing_image(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    result = run_cli(["chat", str(SAMPLES / "loc.png"), "--server", f"http://127.0.0.1:{port}"], tmp_path)
    assert result.returncode == 2
    assert "no Defect-GLM server answers" in result.stderr and "Traceback" not in result.stderr
    result = run_cli(["chat", str(tmp_path / "missing.png"), "--server", f"http://127.0.0.1:{port}"], tmp_path)
    assert result.returncode == 2 and "cannot read the image" in result.stderr


def test_findings_lines_in_both_languages():
    from data_tools.synthetic import generate

    wafer = generate("Center+Scratch", np.random.default_rng(3))
    findings = build_findings(wafer, ("Center", "Scratch"))
    english = format_findings(findings, "en")
    assert "patterns: Center + Scratch" in english and f"{wafer.failing} failing" in english
    chinese = format_findings(findings, "zh")
    assert "中心 + 划痕" in chinese and f"{wafer.failing} 颗失效" in chinese
    unknown = format_findings(build_findings(wafer, None), "en")
    assert "not recognised" in unknown and "[class Unknown]" in unknown
    assert isinstance(findings, wire.Findings)


def test_demo_page_files_are_self_contained():
    """No CDN, no build step: every script and stylesheet the page loads is one of ours under /static/."""
    page = (ROOT / "model_server" / "web" / "index.html").read_text(encoding="utf-8")
    for needle in ("http://", "https://", "//cdn"):
        assert needle not in page.replace("http://127.0.0.1", "")
    for ref in ("/static/app.css", "/static/app.js", "/static/i18n.js"):
        assert ref in page
        assert (ROOT / "model_server" / "web" / ref.lstrip("/")).is_file()


def test_committed_samples_are_what_the_script_makes(tmp_path):
    from model_server.web.make_samples import MANIFEST_NAME, write_samples

    manifest = json.loads(write_samples(tmp_path).read_text(encoding="utf-8"))
    committed = json.loads((SAMPLES / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert manifest["samples"] == committed["samples"]
    from data_tools.image_reader import read_wafer_image

    for sample in committed["samples"]:
        fresh = read_wafer_image(tmp_path / sample["file"])
        shipped = read_wafer_image(SAMPLES / sample["file"])
        assert np.array_equal(fresh.grid, shipped.grid), sample["file"]
