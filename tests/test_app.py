"""The Gradio web demo (app.py): handlers in-process, the named API through gradio_client, the page in headless Chromium.

The server runs ``python app.py`` on 127.0.0.1 (a free port) with a tiny random-weight pipeline folder, so the whole
cascade and the GLB export run on the CPU in seconds. Browser tests need Playwright (PyPI) and a Chromium binary
(Debian's ``chromium``; ``PIXAL3D_CHROMIUM`` overrides the path); without them they are skipped, saying why.
Set ``PIXAL3D_APP_SCREENSHOT=path.png`` to keep a screenshot of the result page (docs/app_screenshot.png is made so).
"""
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio", reason="the web demo needs gradio (pip install gradio)")

from pixal3d.app.backend import HISTORY_SIZE, DemoBackend  # noqa: E402
from pixal3d.app.session import SessionFiles  # noqa: E402
from pixal3d.app.state import load_generation, save_generation  # noqa: E402
from pixal3d.pipelines.random_pipeline import write_random_pipeline  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "assets" / "images" / "triposr_robot.png"
STARTUP_TIMEOUT = 240


# ---------------------------------------------------------------------------------------------------------- helpers
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """``python app.py`` in a subprocess whose temporary files go to ``tmp``."""

    def __init__(self, model: Path, tmp: Path):
        self.tmp = tmp
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = tmp / "app.log"
        env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}
        env.update(TMPDIR=str(tmp), GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "app.py"), "--model", str(model), "--device", "cpu", "--host", "127.0.0.1",
             "--port", str(self.port)], cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + STARTUP_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"app.py did not answer within {STARTUP_TIMEOUT} s:\n{self.log()}")
            time.sleep(0.5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def app_dirs(self):
        return sorted(self.tmp.glob("pixal3d-app-*"))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return write_random_pipeline(tmp_path_factory.mktemp("app_model") / "pipe")


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    srv = _Server(tiny_model, tmp_path_factory.mktemp("app_server"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (pip install "
                                                                     "playwright; never `playwright install`)")
    exe = os.environ.get("PIXAL3D_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("browser tests need a Chromium binary (apt-get install chromium) or PIXAL3D_CHROMIUM=path")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


@pytest.fixture()
def page(browser, server):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
    pg = ctx.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server.url)
    pg.wait_for_selector("#pixal3d-generate", timeout=60_000)
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


@pytest.fixture(scope="module")
def backend(tiny_model, tmp_path_factory):
    from pixal3d.pipelines.image_to_3d import Pixal3DImageTo3DPipeline
    pipe = Pixal3DImageTo3DPipeline.from_pretrained(str(tiny_model))
    return DemoBackend(pipe, SessionFiles(tmp_path_factory.mktemp("app_files"), cleanup_at_exit=False))


# ------------------------------------------------------------------------------------------- in-process handlers
def test_session_files_are_per_session_sanitised_and_swept(tmp_path):
    files = SessionFiles(tmp_path / "root", max_age_s=100, cleanup_at_exit=False)
    a = files.new_path("abc123", "pixal3d seed/1", ".glb")
    b = files.new_path("../../evil", "x", ".glb")
    assert a.parent == tmp_path / "root" / "abc123" and a.name.startswith("pixal3d_seed_1_") and a.suffix == ".glb"
    assert b.parent.parent == tmp_path / "root"  # no escape from the root
    assert files.new_path("abc123", "pixal3d seed/1", ".glb") != a
    old = files.folder("old")
    os.utime(old, (time.time() - 1000, time.time() - 1000))
    assert files.sweep() == 1 and not old.exists() and a.parent.exists()
    files.cleanup("abc123")
    assert not a.parent.exists()
    files.cleanup_all()
    assert not (tmp_path / "root").exists()


def test_generation_state_round_trip_and_rejects_other_files(backend, tmp_path):
    img = backend.preprocess(str(EXAMPLE))
    meshes, (_, _, res) = backend.pipe.run(img, preprocess_image=False, pipeline_type="512", seed=0,
                                           return_latent=True)
    path = save_generation(tmp_path / "g.npz", meshes[0], res, {"seed": 0, "pixal3d_frame": True})
    mesh, res2, meta = load_generation(path)
    assert res2 == res and meta == {"seed": 0, "pixal3d_frame": True}
    np.testing.assert_array_equal(mesh.faces, meshes[0].faces)
    np.testing.assert_array_equal(mesh.attrs, meshes[0].attrs)
    assert mesh.layout == meshes[0].layout
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a Pixal3D generation file"):
        load_generation(bad)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a Pixal3D generation file"):
        load_generation(tmp_path / "other.npz")


def test_uploads_are_checked_by_type_size_and_content(backend, tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(gr.Error, match="not a supported image type"):
        backend.preprocess(str(txt))
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"definitely not a png")
    with pytest.raises(gr.Error, match="not a readable image"):
        backend.preprocess(str(fake))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(gr.Error, match="empty"):
        backend.preprocess(str(empty))
    small = DemoBackend(backend.pipe, backend.files, max_upload_mb=0.01)
    with pytest.raises(gr.Error, match="limit is 0.01 MB"):
        small.preprocess(str(EXAMPLE))
    tiny_limit = DemoBackend(backend.pipe, backend.files, max_megapixels=0.1)
    with pytest.raises(gr.Error, match="megapixels|MP"):
        tiny_limit.preprocess(str(EXAMPLE))
    assert backend.preprocess(None) is None


def test_preprocess_returns_a_square_black_background_cutout(backend):
    out = backend.preprocess(str(EXAMPLE))
    assert out.mode == "RGB" and out.width == out.height
    arr = np.asarray(out)
    assert arr[0, 0].max() == 0 and arr[-1, -1].max() == 0  # corners: black background
    assert arr.max() > 100  # the object is there


class _RecordingProgress:
    def __init__(self):
        self.descs = []

    def __call__(self, progress, desc=None, total=None, unit="steps"):
        self.descs.append(desc)


def _sampler_args(backend):
    out = []
    for stage in ("sparse_structure", "shape_slat", "tex_slat"):
        out += list(backend.sampler_default(stage))
    return out


@pytest.mark.parametrize("ptype,stages", [
    ("512", ["sparse structure", "shape", "texture", "decoding mesh and PBR voxels"]),
    ("1024_cascade", ["sparse structure", "shape (coarse)", "shape (fine)", "texture",
                      "decoding mesh and PBR voxels"])])
def test_generate_reports_each_stage_and_feeds_extract_glb(backend, ptype, stages):
    prog = _RecordingProgress()
    img = backend.preprocess(str(EXAMPLE))
    state, seed, status = backend.generate(img, 5, False, ptype, "Manual", 30.0, *_sampler_args(backend), False,
                                           progress=prog)
    n = len(stages)
    assert [d for d in prog.descs if d.startswith("Stage")] == [f"Stage {i + 1}/{n}: {s}"
                                                                 for i, s in enumerate(stages)]
    # the stage hooks are removed again: the pipeline's own methods are back
    assert not {"sample_sparse_structure", "sample_shape_slat", "sample_tex_slat",
                "decode_latent"} & set(vars(backend.pipe))
    assert seed == 5 and "seed 5" in status and "30.0° (manual)" in status
    mesh, res, meta = load_generation(state)
    assert meta["pipeline_type"] == ptype and res == (32 if ptype == "512" else 64)
    glb, glb2 = backend.extract_glb(state, 20_000, 256, progress=_RecordingProgress())
    assert glb == glb2 and Path(glb).read_bytes()[:4] == b"glTF"
    assert Path(glb).parent.parent == backend.files.root  # inside the app's per-session folders


def test_generate_validates_inputs_with_readable_errors(backend):
    img = backend.preprocess(str(EXAMPLE))
    args = _sampler_args(backend)
    with pytest.raises(gr.Error, match="Upload an image"):
        backend.generate(None, 1, False, "512", "Auto", 30, *args, progress=_RecordingProgress())
    with pytest.raises(gr.Error, match="not available with these weights"):
        backend.generate(img, 1, False, "2048_cascade", "Auto", 30, *args, progress=_RecordingProgress())
    with pytest.raises(gr.Error, match="Seed must be between"):
        backend.generate(img, -3, False, "512", "Auto", 30, *args, progress=_RecordingProgress())
    with pytest.raises(gr.Error, match="Field of view must be between"):
        backend.generate(img, 1, False, "512", "Manual", 500, *args, progress=_RecordingProgress())
    bad = list(args)
    bad[0] = 0
    with pytest.raises(gr.Error, match="Sparse structure steps must be between 1 and 100"):
        backend.generate(img, 1, False, "512", "Auto", 30, *bad, progress=_RecordingProgress())
    with pytest.raises(gr.Error, match="generate a model first"):
        backend.extract_glb(None, 1000, 512, progress=_RecordingProgress())
    with pytest.raises(gr.Error, match="Texture size must be between"):
        backend.extract_glb("x.npz", 20_000, 3, progress=_RecordingProgress())


def test_random_seed_is_drawn_and_reported(backend):
    img = backend.preprocess(str(EXAMPLE))
    _, seed, status = backend.generate(img, 1, True, "512", "Auto", 30, *_sampler_args(backend),
                                       progress=_RecordingProgress())
    assert 0 <= seed < 2 ** 31 and f"seed {seed}" in status
    assert "(default: MoGe-2 is not available)" in status or "(MoGe-2 estimate)" in status


def test_history_keeps_the_newest_results_and_picks_them(backend, tmp_path):
    history = []
    img = Image.new("RGB", (300, 200), (200, 10, 10))
    for i in range(HISTORY_SIZE + 2):
        glb = tmp_path / f"{i}.glb"
        glb.write_bytes(b"glTF")
        history, items = backend.add_to_history(history, str(glb), img, i, "512")
    assert len(history) == HISTORY_SIZE and len(items) == HISTORY_SIZE
    assert history[0]["glb"].endswith(f"{HISTORY_SIZE + 1}.glb") and items[0][1].startswith(f"#{HISTORY_SIZE + 2}")
    assert max(Image.open(items[0][0]).size) <= 256
    evt = gr.SelectData(target=None, data={"index": 2, "value": None})
    assert backend.pick_from_history(history, evt) == (history[2]["glb"], history[2]["glb"])
    with pytest.raises(gr.Error, match="no longer"):
        backend.pick_from_history(history, gr.SelectData(target=None, data={"index": 99, "value": None}))


# ----------------------------------------------------------------------------------------------- command line
@pytest.mark.skipif((REPO / "assets" / "models" / "pixal3d-demo").exists(), reason="the demo model is embedded")
def test_app_without_model_explains_what_to_pass():
    r = subprocess.run([sys.executable, str(REPO / "app.py")], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert r.returncode == 2 and "--model" in r.stderr and "random_pipeline" in r.stderr


def test_app_with_missing_model_folder_fails_clearly(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "app.py"), "--model", str(tmp_path / "nope"), "--device", "cpu"],
                       capture_output=True, text=True, cwd=REPO, timeout=300, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert r.returncode == 2 and "could not load the model" in r.stderr
    assert not list(tmp_path.glob("pixal3d-app-*"))  # its temporary folder is gone too


# ------------------------------------------------------------------------------------------ API (gradio_client)
def test_api_preprocess_generate_extract_glb(server, tmp_path):
    from gradio_client import Client, handle_file
    client = Client(server.url, verbose=False, download_files=str(tmp_path))
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/preprocess", "/generate", "/extract_glb"} <= set(api)
    prepared = client.predict(handle_file(str(EXAMPLE)), api_name="/preprocess")
    with Image.open(prepared) as im:
        assert im.width == im.height and im.mode == "RGB"
    state, seed, status = client.predict(handle_file(prepared), 7, False, "512", "Manual", 20.0, 2, 7.5, 2, 7.5, 2,
                                         1.0, False, api_name="/generate")
    assert seed == 7 and "seed 7" in status and Path(state).suffix == ".npz"
    glb, glb_download = client.predict(handle_file(state), 20_000, 512, api_name="/extract_glb")
    data = Path(glb).read_bytes()
    assert data[:4] == b"glTF" and len(data) > 1000 and Path(glb_download).read_bytes() == data
    # the server wrote its outputs into one of its per-session folders, inside its own temporary root
    (root,) = server.app_dirs()
    written = list((root / "sessions").glob("*/*.glb"))
    assert written and all(p.parent.parent == root / "sessions" for p in written)


def test_api_errors_are_messages_not_tracebacks(server, tmp_path):
    from gradio_client import Client, handle_file
    client = Client(server.url, verbose=False, download_files=str(tmp_path))
    prepared = client.predict(handle_file(str(EXAMPLE)), api_name="/preprocess")
    # out-of-range settings are refused by the sliders' own validation (the handler re-checks them, see above)
    with pytest.raises(Exception, match="less than minimum value 1") as e:
        client.predict(handle_file(prepared), 7, False, "512", "Auto", 20.0, 0, 7.5, 2, 7.5, 2, 1.0, False,
                       api_name="/generate")
    assert "Traceback" not in str(e.value)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(Exception, match="not a Pixal3D generation file"):
        client.predict(handle_file(str(junk)), 20_000, 512, api_name="/extract_glb")


# ------------------------------------------------------------------------------------------------- the browser
def test_browser_upload_generate_view_and_download(page, server, tmp_path):
    page.locator("#pixal3d-input input[type=file]").set_input_files(str(EXAMPLE))
    prepared = page.wait_for_selector("#pixal3d-prepared img", timeout=120_000)
    preview = page.request.get(prepared.get_attribute("src"))
    assert preview.ok
    with Image.open(io.BytesIO(preview.body())) as im:
        assert im.width == im.height  # the cut-out preview is the square crop
    page.get_by_text("GLB export").click()
    page.locator("#pixal3d-texture-size input").click()
    page.get_by_role("option", name="512", exact=True).click()
    page.locator("#pixal3d-resolution").get_by_label("512³ · fast preview").check()
    page.click("#pixal3d-generate")
    page.wait_for_selector("#pixal3d-viewer canvas", timeout=240_000)
    link = page.locator("#pixal3d-viewer a[data-testid=model3d-download-link]")
    href = link.get_attribute("href")
    assert href and href.endswith(".glb") and href.startswith(server.url)
    assert page.request.get(href).body()[:4] == b"glTF"
    page.wait_for_selector("#pixal3d-download:not([disabled])", timeout=60_000)
    with page.expect_download(timeout=60_000) as dl:
        page.click("#pixal3d-download")
    download = dl.value
    assert download.suggested_filename.endswith(".glb")
    assert Path(download.path()).read_bytes()[:4] == b"glTF"
    assert "seed 42" in page.locator("#pixal3d-status").inner_text()
    page.wait_for_selector("#pixal3d-history img", timeout=30_000)
    assert page.locator("#pixal3d-history img").count() == 1
    time.sleep(2)  # let the viewer finish its first frames
    page.screenshot(path=os.environ.get("PIXAL3D_APP_SCREENSHOT") or str(tmp_path / "result.png"), full_page=True)
    # this tab's outputs are in its own session folder, which goes away when the tab is closed
    (root,) = server.app_dirs()
    name = Path(download.suggested_filename).name
    (session_dir,) = {p.parent for p in (root / "sessions").glob(f"*/{name}")}
    page.close()
    deadline = time.time() + 60
    while session_dir.exists() and time.time() < deadline:
        time.sleep(0.5)
    assert not session_dir.exists(), "closing the tab did not remove its output folder"


def test_browser_example_click_shows_the_cutout(page):
    examples = page.locator("#pixal3d-examples button.gallery-item")
    assert examples.count() >= 4
    examples.filter(has=page.locator("img[src*='jeweled_crown']")).click()
    page.wait_for_selector("#pixal3d-input img[src*='jeweled_crown']", timeout=60_000)
    img = page.wait_for_selector("#pixal3d-prepared img", timeout=120_000)
    assert img.get_attribute("src").endswith(".png")


def test_browser_non_image_upload_shows_an_error(page, tmp_path):
    fake = tmp_path / "holiday.png"
    fake.write_bytes(b"this is a text file with a .png name")
    page.locator("#pixal3d-input input[type=file]").set_input_files(str(fake))
    toast = page.wait_for_selector(".toast-body", timeout=60_000)
    text = toast.inner_text()
    assert "not a readable image" in text and "Traceback" not in text
    assert page.locator("#pixal3d-prepared img").count() == 0
    # generating without a usable image is refused with a message too
    page.click("#pixal3d-generate")
    page.wait_for_function("() => [...document.querySelectorAll('.toast-body')]"
                           ".some(e => e.innerText.includes('Upload an image'))", timeout=60_000)


# -------------------------------------------------------------------------------------------------- shutdown
def test_app_exit_removes_its_temporary_folder(tiny_model, tmp_path):
    srv = _Server(tiny_model, tmp_path / "srv")
    try:
        assert len(srv.app_dirs()) == 1
    finally:
        code = srv.stop()
    assert code == 0, srv.log()
    assert srv.app_dirs() == [], "the app left its temporary folder behind"
