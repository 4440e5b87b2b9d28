"""The ``serve`` web app: its ``segment`` and ``edit`` APIs through ``gradio_client``, and the page (both tabs) in
headless Chromium.

These tests share one app on a free port of 127.0.0.1 serving the shipped shapes model. They skip, saying why, when
gradio / gradio_client (the ``[app]`` extra), Playwright or Chromium are missing; CI (``.ci/run``) installs them.
Set ``DIFFSEGMENTER_SCREENSHOT=docs/images/app.png`` to save the browser test's screenshots (the README's pictures:
the Segment tab there, the Edit tab beside it as ``app_edit.png``).
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Gradio's own queue code calls pandas options that pandas 3 deprecates; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "diffsegmenter" / "examples"
#: A shipped example and the classes in it (the scene's ground truth: research.shapes.world.example_scenes()).
SCENE, PRESENT = EXAMPLES / "shapes_30000010.png", ["triangle", "circle"]
#: The edit endpoint's parameters, and the edit the tests ask for (few steps: fast).
EDIT_PARAMETERS = ["image", "target", "prompt", "dilate", "steps", "guidance", "seed", "classes"]
EDIT = {"target": "circle", "prompt": "a square", "dilate": 2, "steps": 4, "guidance": None, "seed": 3}
CHROMIUM = os.environ.get("DIFFSEGMENTER_CHROMIUM", "/usr/lib/chromium/chromium")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served():
    """``(url, service)`` of the app serving the shapes model on 127.0.0.1."""
    pytest.importorskip("gradio", reason="the web app needs gradio: pip install 'diffsegmenter[app]'")
    from diffsegmenter import DiffSegmenter
    from diffsegmenter.app import SegmentService, launch_app

    service = SegmentService(DiffSegmenter.from_pretrained("shapes"), time_limit=120)
    port = _free_port()
    blocks = launch_app(service, host="127.0.0.1", port=port, model_name="shapes", block=False, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", service
    finally:
        blocks.close()
        service.close()


def test_segment_endpoint_from_gradio_client(served, capfd) -> None:
    pytest.importorskip("gradio_client", reason="the API test needs gradio_client: pip install 'diffsegmenter[app]'")
    from gradio_client import Client, handle_file

    from diffsegmenter.io import load_label_png

    url, service = served
    client = Client(url, verbose=False)
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert sorted(api) == ["/edit", "/segment"]  # one public endpoint per tab; the legend step is private
    segment_parameters = [p["parameter_name"] for p in api["/segment"]["parameters"]]
    assert segment_parameters == ["image", "classes", "filter", "tau", "refine"]
    assert [p["parameter_name"] for p in api["/edit"]["parameters"]] == EDIT_PARAMETERS

    annotated, areas, label_png = client.predict(
        image=handle_file(str(SCENE)), classes=", ".join(PRESENT), filter="none", tau=None, api_name="/segment"
    )
    assert list(areas) == PRESENT and all(share > 0.01 for share in areas.values()), areas
    labels = load_label_png(label_png)
    assert labels.shape == (64, 64) and set(np.unique(labels)) <= {0, 1, 2}
    for index, name in enumerate(PRESENT, start=1):
        assert abs(np.mean(labels == index) - areas[name]) < 1e-4
    with Image.open(annotated) as picture:
        assert picture.width >= 256 and picture.height > 256  # enlarged, legend below

    # the refine switch is SegmenterConfig.refine for the request: PAMR's labels with it, the plain ones without
    # (this scene: 53 of 4,096 pixels differ), and a client that leaves it out gets the model's (none)
    original = np.asarray(Image.open(SCENE).convert("RGB"))
    for switch, refine in ((True, "pamr"), (False, "none")):
        _, _, png = client.predict(
            image=handle_file(str(SCENE)), classes=", ".join(PRESENT), filter="none", refine=switch,
            api_name="/segment",
        )  # fmt: skip
        with service.lock:  # the app's worker thread shares the model
            direct = service.segmenter.segment(original, classes=PRESENT, refine=refine).labels
        assert np.array_equal(load_label_png(png), direct), refine
    with service.lock:
        plain = service.segmenter.segment(original, classes=PRESENT, refine="none").labels
        refined = service.segmenter.segment(original, classes=PRESENT, refine="pamr").labels
    assert not np.array_equal(plain, refined)  # the switch makes a difference the test can see
    assert np.array_equal(labels, plain) and service.segmenter.config.refine == "none"
    with pytest.raises(Exception, match="refine must be one of"):
        client.predict(image=handle_file(str(SCENE)), classes="circle", refine="crf", api_name="/segment")

    capfd.readouterr()
    with pytest.raises(Exception, match="no image"):  # a bad request is answered with a message
        client.predict(image=None, classes="circle", filter="none", tau=None, api_name="/segment")
    assert "Traceback" not in capfd.readouterr().err  # not a 25-line traceback in the server's log for each
    with pytest.raises(Exception, match="duplicate"):
        client.predict(image=handle_file(str(SCENE)), classes="circle, Circle", filter="none", api_name="/segment")
    # a class name is the visitor's text: it reached the page's toast as HTML ("<sofa>" vanished)
    with pytest.raises(Exception, match="duplicate class name '&lt;Sofa>' \\(also given as '&lt;sofa>'\\)"):
        client.predict(image=handle_file(str(SCENE)), classes="<sofa>, <Sofa>", filter="none", api_name="/segment")


def test_edit_endpoint_from_gradio_client(served) -> None:
    pytest.importorskip("gradio_client", reason="the API test needs gradio_client: pip install 'diffsegmenter[app]'")
    from gradio_client import Client, handle_file

    url, service = served
    client = Client(url, verbose=False)
    edited_png, mask_png = client.predict(image=handle_file(str(SCENE)), **EDIT, api_name="/edit")
    original = np.asarray(Image.open(SCENE).convert("RGB"))
    edited = np.asarray(Image.open(edited_png))
    mask = np.asarray(Image.open(mask_png))
    assert edited.shape == original.shape == (64, 64, 3) and edited.dtype == np.uint8
    assert mask.shape == (64, 64) and mask.dtype == np.uint8
    assert 0 < np.mean(mask > 0) < 0.5  # the circle, dilated: part of the scene
    assert np.array_equal(edited[mask == 0], original[mask == 0])  # untouched outside, exactly
    assert np.abs(edited[mask == 255].astype(int) - original[mask == 255]).mean() > 1.0  # regenerated inside
    direct = service.segmenter.edit(  # the tab is DiffSegmenter.edit with the fields given
        original, EDIT["target"], EDIT["prompt"], seed=EDIT["seed"], dilate=EDIT["dilate"], steps=EDIT["steps"],
        progress=False,
    )  # fmt: skip
    assert np.array_equal(direct.image, edited)

    for bad, match in (
        ({"target": ""}, "no target"),
        ({"target": "circle, square"}, "one target class"),
        ({"prompt": " "}, "no prompt"),
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"steps": 1000}, "at most 100"),
    ):
        with pytest.raises(Exception, match=match):
            client.predict(image=handle_file(str(SCENE)), **{**EDIT, **bad}, api_name="/edit")


def _areas(service, refine: str) -> dict[str, float]:
    """The area shares the app reports for SCENE with PRESENT, from a direct library call (under the service's lock:
    the app's worker thread shares the model)."""
    with service.lock:
        result = service.segmenter.segment(
            np.asarray(Image.open(SCENE).convert("RGB")), classes=PRESENT, refine=refine
        )
    return {name: round(float(np.mean(result.labels == i)), 6) for i, name in enumerate(PRESENT, start=1)}


def _shown_areas(page) -> dict[str, float] | None:
    """The area shares the page shows, None while a request is running (its status is shown over the old ones)."""
    text = page.locator("#areas").inner_text()
    if "processing" in text or "\n0.0s" in text:
        return None
    return {name: float(value) for name, value in re.findall(r'"([^"]+)"\s*:\s*([0-9.]+)', text)}


def test_the_page_in_headless_chromium(served) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs Playwright for Python")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; or set DIFFSEGMENTER_CHROMIUM)")
    url, service = served
    outside: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(60_000)
            page.on(
                "request",
                lambda r: None if r.url.startswith(url) or r.url.startswith("data:") else outside.append(r.url),
            )
            page.goto(url)
            page.locator("#image input[type=file]").set_input_files(str(SCENE))
            page.locator("#classes textarea").fill(", ".join(PRESENT))
            page.locator("#filter").get_by_text("none", exact=True).click()
            page.locator("#segment-button").click()
            legend = page.locator("#legend-list li")
            legend.first.wait_for()
            deadline = time.monotonic() + 60
            while legend.count() < len(PRESENT) and time.monotonic() < deadline:
                time.sleep(0.2)
            texts = [legend.nth(i).inner_text() for i in range(legend.count())]
            assert [t.split(" (")[0] for t in texts] == PRESENT, texts
            page.locator("#annotated img").wait_for()
            target = os.environ.get("DIFFSEGMENTER_SCREENSHOT")
            if target:
                page.wait_for_timeout(500)
                page.screenshot(path=target, full_page=True)
            # the refine switch starts at the model's setting (off); switched on, the page shows PAMR's area shares
            switch = page.locator("#refine input[type=checkbox]")
            assert not switch.is_checked()
            plain, refined = _areas(service, "none"), _areas(service, "pamr")
            assert _shown_areas(page) == plain != refined
            switch.check()
            page.locator("#segment-button").click()
            deadline = time.monotonic() + 60
            while _shown_areas(page) != refined and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _shown_areas(page) == refined
            switch.uncheck()

            page.get_by_role("tab", name="Edit").click()
            page.locator("#edit-image input[type=file]").set_input_files(str(SCENE))
            page.locator("#edit-target textarea").fill(EDIT["target"])
            page.locator("#edit-prompt textarea").fill(EDIT["prompt"])
            page.locator("#edit-steps input").fill(str(EDIT["steps"]))
            page.locator("#edit-button").click()
            page.locator("#edited img").wait_for()
            page.locator("#edit-mask img").wait_for()
            assert page.locator("#edited img").get_attribute("src")
            if target:  # the Edit tab beside it: app.png -> app_edit.png
                page.wait_for_timeout(500)
                page.screenshot(path=str(Path(target).with_name(Path(target).stem + "_edit.png")), full_page=True)
        finally:
            browser.close()
    assert outside == []  # nothing loaded from outside the server: no CDN fonts or scripts


def test_serve_is_a_subcommand_with_host_port_and_time_limit() -> None:
    from diffsegmenter.app import DEFAULT_HOST, DEFAULT_PORT
    from diffsegmenter.cli import COMMANDS, build_parser

    assert "serve" in COMMANDS
    args = build_parser().parse_args(["serve", "--model", "shapes", "--port", "7999", "--time-limit", "30"])
    assert (args.model, args.host, args.port, args.time_limit) == ("shapes", DEFAULT_HOST, 7999, 30.0)
    assert build_parser().parse_args(["serve"]).port == DEFAULT_PORT and DEFAULT_HOST == "127.0.0.1"


def test_serve_on_a_taken_port_says_so_and_never_claims_to_be_serving(capsys) -> None:
    pytest.importorskip("gradio", reason="the web app needs gradio: pip install 'diffsegmenter[app]'")
    from diffsegmenter import cli

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = cli.main(["serve", "--model", "shapes", "--port", str(port)])
    captured = capsys.readouterr()
    assert code == 2
    assert f"cannot serve on 127.0.0.1:{port}" in captured.err
    assert "Serving" not in captured.out


def test_bad_requests_are_refused_before_the_model_runs(tmp_path: Path) -> None:
    from diffsegmenter.app import AppError, SegmentService, parse_class_text

    class NoModel:
        default_classes = None

        def segment(self, *args, **kwargs):  # pragma: no cover - must not be reached
            raise AssertionError("the model ran")

    service = SegmentService(NoModel(), time_limit=5, work_dir=tmp_path)
    try:
        with pytest.raises(AppError, match="no image"):
            service.run(None, "cat")
        with pytest.raises(AppError, match="could not be found"):
            service.run(str(tmp_path / "missing.png"), "cat")
        (tmp_path / "x.png").write_bytes(b"not an image")
        with pytest.raises(AppError, match="unknown filter"):
            service.run(str(tmp_path / "x.png"), "cat", "sam")
        with pytest.raises(AppError, match="no classes of its own"):
            service.run(str(tmp_path / "x.png"), "", "none")
        with pytest.raises(AppError, match="tau"):
            service.run(str(tmp_path / "x.png"), "cat", "none", 1.5)
        with pytest.raises(AppError, match="cannot use this image"):
            service.run(str(tmp_path / "x.png"), "cat", "none")
        with pytest.raises(AppError, match="at most"):
            parse_class_text(",".join(f"c{i}" for i in range(60)))
    finally:
        service.close()


@pytest.mark.parametrize(
    "change, match",
    [
        ({"image": None}, "no image"),
        ({"target": None}, "no target"),
        ({"target": "cat, dog"}, "one target class"),
        ({"target": "cat, cat"}, "one target class"),
        ({"prompt": ""}, "no prompt"),
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"steps": 101}, "at most 100"),
        ({"dilate": 1.5}, "dilate must be a whole number"),
        ({"dilate": 65}, "at most 64"),
        ({"guidance": "strong"}, "guidance must be a number"),
        ({"guidance": -1.0}, "guidance must be a number >= 0"),
        ({"seed": -1}, "seed must be a whole number from 0"),
        ({"seed": 1e20}, r"seed 1e\+20 is too large to be read exactly"),  # was torch's overflow
        ({"seed": 2**63 - 1}, r"seed must be a whole number from 0 to 9223372036854775806"),  # the library's limit
        # 2**64 - 1 was read through a float: refused as 18446744073709551616, and 2**53 + 1 ran as 2**53
        ({"seed": 2**64 - 1}, r"got 18446744073709551615$"),
        ({"seed": "9007199254740993x"}, "seed must be a whole number"),
        ({"classes": "['circle', 'square']"}, "one comma-separated text"),
    ],
)
def test_bad_edit_requests_are_refused_before_the_model_runs(tmp_path: Path, change, match) -> None:
    from diffsegmenter.app import AppError, SegmentService
    from diffsegmenter.app.edit import run_edit

    class NoModel:
        default_classes = None

        def edit(self, *args, **kwargs):  # pragma: no cover - must not be reached
            raise AssertionError("the model ran")

    picture = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(picture)
    request = {"image": str(picture), "target": "cat", "prompt": "a dog", "steps": 2, **change}
    service = SegmentService(NoModel(), time_limit=5, work_dir=tmp_path / "work")
    try:
        with pytest.raises(AppError, match=match):
            run_edit(service, **request)
    finally:
        service.close()


def test_whole_numbers_of_the_edit_form_are_read_exactly() -> None:
    from diffsegmenter.app.edit import _whole_number

    assert _whole_number("seed", 2**53 + 1) == 2**53 + 1  # through float it ran as 2**53
    assert _whole_number("seed", " 9007199254740993 ") == 2**53 + 1
    assert _whole_number("steps", 4.0) == 4 and _whole_number("steps", "") is None


# ------------------------------------------------------------------- faults found by an app fault hunt (session 14)
def test_uploads_reach_the_library_as_they_are(served, tmp_path: Path) -> None:
    # gr.Image converted every non-RGB upload to RGB: 16-bit grey became white, CMYK and grey JPEGs re-compressed
    pytest.importorskip("gradio_client", reason="the API test needs gradio_client: pip install 'diffsegmenter[app]'")
    from gradio_client import Client, handle_file

    from diffsegmenter.images import load_image
    from diffsegmenter.io import load_label_png

    url, service = served
    client = Client(url, verbose=False)
    grey = np.asarray(Image.open(SCENE).convert("L")).astype(np.uint16) * 257
    deep = tmp_path / "deep.png"
    Image.fromarray(grey).save(deep)  # mode I;16
    cmyk = tmp_path / "cmyk.jpg"
    Image.open(SCENE).convert("CMYK").save(cmyk, quality=95)
    for path in (deep, cmyk):
        _, _, png = client.predict(image=handle_file(str(path)), classes="triangle, circle", api_name="/segment")
        with service.lock:
            direct = service.segmenter.segment(load_image(path), classes=PRESENT).labels
        assert np.array_equal(load_label_png(png), direct), path.name
        edited_png, mask_png = client.predict(image=handle_file(str(path)), **EDIT, api_name="/edit")
        mask, edited = np.asarray(Image.open(mask_png)), np.asarray(Image.open(edited_png))
        assert np.array_equal(edited[mask == 0], load_image(path)[mask == 0]), path.name  # exactly the file's
    huge = tmp_path / "huge.png"
    Image.new("1", (5000, 4000)).save(huge)  # 20 MP, a few kB
    with pytest.raises(Exception, match=r"5000 x 4000 = 20.0 MP; this server takes at most 16 MP: downscale it"):
        client.predict(image=handle_file(str(huge)), classes="circle", api_name="/segment")
    with pytest.raises(Exception, match="one comma-separated text"):  # a client's Python list, as a Textbox gets it
        client.predict(image=handle_file(str(SCENE)), classes=["triangle", "circle"], api_name="/segment")
    # Gradio opened every upload with Pillow first: a file that is not an image, or one over Pillow's bomb limit,
    # got Gradio's message naming the server's temp folder
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    bomb = tmp_path / "bomb.png"
    Image.new("1", (15000, 15000)).save(bomb)  # 225 MP, 28 kB: over Pillow's 179 MP
    for path, match in ((text, "cannot use this image: .*not a recognised image format"), (bomb, "over Pillow's")):
        for endpoint, fields in (("/segment", {"classes": "circle"}), ("/edit", EDIT)):
            with pytest.raises(Exception, match=match) as error:
                client.predict(image=handle_file(str(path)), **fields, api_name=endpoint)
            assert "/tmp" not in str(error.value) and "preprocess" not in str(error.value), str(error.value)
    assert "this server takes at most 16 MP: downscale it" in str(error.value)


def test_a_result_all_background_because_of_tau_says_so(served) -> None:
    # readout="single-block" scores are raw probabilities under the page's tau: every request came back all
    # background with the reason only in the server's log, and the Edit tab blamed the class name
    from diffsegmenter.app.edit import run_edit

    url, service = served
    assert service.run(str(SCENE), ", ".join(PRESENT)).note is None
    # a filter's best guess (no class reached its threshold) looked like a finding: 'square' on a scene without one
    guessed = service.run(str(SCENE), "square", filter="diffusion")
    assert list(guessed.areas) == ["square"] and "only its best guess" in (guessed.note or ""), guessed.note
    note = service.run(str(SCENE), ", ".join(PRESENT), tau=1.0).note
    assert note and note.startswith("every class's score is at most tau=1 (the highest is "), note
    config = service.segmenter.config
    try:
        service.segmenter.config = config.replace(tau=1.0)  # the Edit tab has no tau: the server's is the reason
        unchanged = run_edit(service, str(SCENE), "circle", "a square", steps=2, seed=3)
    finally:
        service.segmenter.config = config
    assert not unchanged.changed and "at most this model's tau=1" in unchanged.note, unchanged.note
    assert run_edit(service, str(SCENE), "circle", "a square", steps=2, seed=3).note is None


def test_the_edit_target_competes_with_the_classes_named(served) -> None:
    # a target that is not in the picture took pixels from the shapes that are (13 % of this scene regenerated)
    from diffsegmenter.app.edit import competing_classes, run_edit

    url, service = served
    assert competing_classes("square", "triangle, Square, circle") == ["square", "triangle", "circle"]
    # compared as class lists compare names (it used .lower(): "STRASSE" stayed, then the list was refused)
    assert competing_classes("Stra\u00dfe", "STRASSE, circle") == ["Stra\u00dfe", "circle"]
    assert competing_classes("square", " ") is None
    alone = run_edit(service, str(SCENE), "square", "a cross", steps=2, seed=3)
    named = run_edit(service, str(SCENE), "square", "a cross", steps=2, seed=3, classes="triangle, circle")
    assert np.mean(np.asarray(Image.open(named.mask)) > 0) < np.mean(np.asarray(Image.open(alone.mask)) > 0)


def test_a_time_out_behind_an_earlier_request_says_the_server_is_busy(tmp_path: Path) -> None:
    import threading

    from diffsegmenter.app import AppError, SegmentService

    service = SegmentService(object(), time_limit=0.3, work_dir=tmp_path)
    release = threading.Event()

    def slow():
        with service.lock:
            release.wait(5)

    try:
        with pytest.raises(AppError, match="took longer than the server's limit"):
            service.call(slow, hint="try less")
        with pytest.raises(AppError, match="still busy with an earlier request"):  # was "try less" too
            service.call(lambda: None, hint="try less")
    finally:
        release.set()
        service.close()
    for bad in (float("inf"), float("nan"), 0.0):
        with pytest.raises(ValueError, match="time_limit must be a number of seconds"):
            SegmentService(object(), time_limit=bad, work_dir=tmp_path / "x")


def test_requests_that_ran_out_of_time_never_run_on_the_model_later(tmp_path: Path) -> None:
    # a timed-out request stayed queued on the model thread and ran anyway, after its user had the error: under load
    # every time-out added a model pass nobody waited for, and the next requests timed out behind them
    import threading

    from diffsegmenter.app import AppError, SegmentService

    service = SegmentService(object(), time_limit=5, work_dir=tmp_path)
    release, started, runs = threading.Event(), threading.Event(), []

    def slow(tag):
        runs.append(tag)
        started.set()
        release.wait(10)

    try:
        threading.Thread(target=lambda: started.wait(10) and setattr(service, "time_limit", 0.2)).start()
        for tag in range(4):  # the first times out once it runs (the limit drops to 0.2 s when it starts)
            with pytest.raises(AppError):
                service.call(slow, tag, hint="try less")
        release.set()
        service.time_limit = 5
        assert service.call(lambda: "done", hint="try less") == "done"
        assert runs == [0]  # the first had started; the three queued behind it were dropped
        assert service._pending == 0
    finally:
        release.set()
        service.close()


def test_the_second_step_of_a_segmentation_is_not_queued() -> None:
    # legend, score maps and RLE file come from a .then step; queued, it was refused with "Queue is full" when 16
    # events waited, so a finished request lost them
    pytest.importorskip("gradio", reason="the web app needs gradio")
    from diffsegmenter import DiffSegmenter
    from diffsegmenter.app import SegmentService, build_app

    service = SegmentService(DiffSegmenter.from_pretrained("shapes"), time_limit=5)
    try:
        deps = build_app(service, "shapes").get_config_file()["dependencies"]
    finally:
        service.close()
    (segment,) = [d for d in deps if d.get("api_name") == "segment"]
    after = [d for d in deps if d.get("trigger_after") == segment["id"]]
    assert segment["queue"] is not False and after and all(d["queue"] is False for d in after)


def test_serve_refuses_a_bad_port_or_host_before_the_model_loads(capsys, monkeypatch) -> None:
    # --port 70000 ended in an OverflowError traceback, after the model had loaded; an unknown host was reported as
    # "Cannot find empty port in range", with advice to set an environment variable this command overrides
    pytest.importorskip("gradio", reason="serve needs gradio")
    from diffsegmenter import cli
    from diffsegmenter.cli import model

    def no_load(*args, **kwargs):
        raise AssertionError("the model loaded")

    monkeypatch.setattr(model, "load_segmenter", no_load)
    with pytest.raises(SystemExit) as stop:  # argparse's usage error
        cli.main(["serve", "--port", "70000", "--offline"])
    assert stop.value.code == 2
    assert "expected a port number in 1..65535, got 70000" in capsys.readouterr().err
    assert cli.main(["serve", "--host", "no.such.host.invalid", "--port", str(_free_port()), "--offline"]) == 2
    err = capsys.readouterr().err
    assert "cannot serve on no.such.host.invalid:" in err and "use --host with an address of this machine" in err
    assert "empty port" not in err


def test_sigterm_stops_the_server_and_removes_its_request_folders(tmp_path: Path) -> None:
    # kill / docker stop / systemd left /tmp/diffsegmenter-serve-* behind (the clean-up ran on Ctrl+C only)
    pytest.importorskip("gradio", reason="serve needs gradio")
    import contextlib
    import os
    import queue
    import signal
    import subprocess
    import sys
    import threading
    import time

    port = _free_port()
    env = {**os.environ, "TMPDIR": str(tmp_path), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffsegmenter", "serve", "--model", "shapes", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        deadline, seen = time.monotonic() + 120, []
        while not any("Serving" in line for line in seen) and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):  # a server that hangs silently cannot stall the suite
                seen.append(lines.get(timeout=1))
        assert any("Serving" in line for line in seen), "".join(seen)[-3000:]
        assert list(tmp_path.glob("diffsegmenter-serve-*"))
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not list(tmp_path.glob("diffsegmenter-serve-*"))


def test_serve_refuses_an_endless_time_limit_and_demo_refuses_the_examples_folder(capsys) -> None:
    from diffsegmenter import cli

    pytest.importorskip("gradio", reason="serve needs gradio")
    assert cli.main(["serve", "--time-limit", "inf", "--offline"]) == 2
    assert "--time-limit must be a number of seconds in (0, 86400]" in capsys.readouterr().err
    before = sorted(p.name for p in EXAMPLES.iterdir())
    assert cli.main(["demo", "--out", str(EXAMPLES), "--offline"]) == 2  # it replaced the examples by label maps
    assert "is the folder of the example images" in capsys.readouterr().err
    assert sorted(p.name for p in EXAMPLES.iterdir()) == before


def test_gradio_deletes_its_copies_of_old_uploads(tmp_path: Path) -> None:
    pytest.importorskip("gradio", reason="the web app needs gradio")
    from diffsegmenter import DiffSegmenter
    from diffsegmenter.app import CACHE_LIFETIME_S, SegmentService, build_app

    service = SegmentService(DiffSegmenter.from_pretrained("shapes"), work_dir=tmp_path)
    try:
        assert build_app(service).delete_cache == (CACHE_LIFETIME_S, CACHE_LIFETIME_S)
        # and building it writes nothing into the package (Gradio writes a .pyi beside a component subclass)
        assert not list((EXAMPLES.parent / "app").glob("*.pyi"))
    finally:
        service.close()


def test_the_clip_filter_is_offered_only_when_the_server_loaded_it(tmp_path: Path, capsys, monkeypatch) -> None:
    # "clip" was always offered: offline, a visitor got the operator's advice and the server's cache path; online, a
    # click would have downloaded CLIP and BLIP inside a request, holding the model
    pytest.importorskip("gradio", reason="serve needs gradio")
    from diffsegmenter import cli
    from diffsegmenter.app import AppError, SegmentService
    from diffsegmenter.cli import model

    Image.open(SCENE).save(tmp_path / "x.png")
    plain = SegmentService(object(), time_limit=5, work_dir=tmp_path / "a")
    clip = object()
    offering = SegmentService(object(), time_limit=5, work_dir=tmp_path / "b", clip_filter=clip)
    try:
        assert plain.filters == ("none", "diffusion") and offering.filters == ("none", "diffusion", "clip")
        with pytest.raises(AppError, match="the clip filter is not available on this server .*serve --clip"):
            plain.check_request(str(tmp_path / "x.png"), "circle", "clip", None)
        assert offering.check_request(str(tmp_path / "x.png"), "circle", "clip", None)[2] is clip
        assert plain.check_request(str(tmp_path / "x.png"), "circle", "diffusion", None)[2] == "diffusion"
    finally:
        plain.close()
        offering.close()
    # serve --clip loads it at start: a missing model is the operator's one-line error, before anything is served
    fake = type("S", (), {"captioner": None, "device": torch.device("cpu"), "dtype": torch.float32})()
    monkeypatch.setattr(model, "load_segmenter", lambda args, overrides: fake)
    port = str(_free_port())
    assert cli.main(["serve", "--port", port, "--offline", "--clip", str(tmp_path / "no-clip")]) == 2
    captured = capsys.readouterr()
    assert "no-clip" in captured.err and "Serving" not in captured.out
