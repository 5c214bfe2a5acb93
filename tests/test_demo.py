"""`dvamn demo --quick` end to end: every stage, the service's answers, the report."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.support.console import RAY_INTERNAL
from tests.support.contracts import EVALUATION_JSON_KEYS

# The quick demo's own output: its 6 stages, one line per held-out query and the report.
CONSOLE_LINE_BUDGET = 75  # it shows about 60; Ray's own output made 510 before (issue 14)


def run_quick_demo(workdir) -> str:
    """`dvamn demo --quick` as a user runs it: its own process and its own local Ray.
    Returns what it showed on the console (stdout and stderr, as a terminal shows them)."""
    command = [sys.executable, "-m", "dvamn.cli", "demo", "--quick", "--workdir", str(workdir)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900, env=env
    )
    assert done.returncode == 0, done.stdout[-6000:]
    return done.stdout


@pytest.mark.timeout(1800)  # two demo runs and a browser session: over the default 600 s
def test_quick_demo_reports_what_the_service_answered_and_reuses_its_work(tmp_path):
    from dvamn.demo import DemoPlan

    plan = DemoPlan.quick(str(tmp_path / "demo"))
    out = run_quick_demo(plan.workdir)
    assert "Recall@1" in out and "report:" in out
    # The console shows the demo's stages, not Ray's chatter; that goes to a log file,
    # whose path the last line gives.
    lines = out.rstrip("\n").split("\n")
    assert not [ln for ln in lines if RAY_INTERNAL.search(ln)], out
    assert len(lines) <= CONSOLE_LINE_BUDGET, out
    assert lines[-1].startswith("logs: ") and "--verbose" in lines[-1]
    log_file = lines[-1].split()[1].rstrip(";")
    assert os.path.getsize(log_file) > 0

    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    answers = json.loads((tmp_path / "demo" / "answers.json").read_text())
    assert set(EVALUATION_JSON_KEYS) <= set(report)

    # Recompute the retrieval numbers from the service's raw answers.
    ranks = []
    for item in answers:
        truth = os.path.splitext(os.path.basename(item["video"]["music"]["track_file"]))[0]
        ids = [m["track_id"] for m in item["answer"]["matches"]]
        assert len(ids) == report["pool_size"]  # every catalog track was ranked
        scores = [m["score"] for m in item["answer"]["matches"]]
        assert scores == sorted(scores)  # best (smallest distance) first
        ranks.append(ids.index(truth) + 1)
    ranks = np.asarray(ranks)
    assert report["queries"] == len(answers) == report["pool_size"]
    for k in (1, 5, 10):
        assert report[f"r_at_{k}"] == np.mean(ranks <= k)
    assert report["median_rank"] == np.median(ranks)
    assert report["chance_r_at_1"] == 1 / report["pool_size"]
    # The model learned something: for half the queries the true track is in the top
    # quarter of the catalog (chance: the top half), and it is first more often than chance.
    assert report["median_rank"] <= (report["pool_size"] + 1) / 4, report
    assert report["r_at_1"] > report["chance_r_at_1"], report

    for picture in ("training_curves.png", "query_by_candidate.png"):
        assert (tmp_path / "demo" / picture).stat().st_size > 1000
    markdown = (tmp_path / "demo" / "report.md").read_text()
    assert f"{report['r_at_1']:.3f}" in markdown

    # A second run reuses the videos, the features and the trained model, and with
    # --keep-serving leaves the service up for the web page, tested in a real browser.
    held_out = answers[0]["video"]
    out = keep_serving_demo(plan.workdir, tmp_path, held_out)
    assert f"reusing {plan.videos} videos" in out
    assert f"({plan.videos} already done, skipped)" in out
    assert "reusing the finished run" in out
    assert "stopping the service" in out


def keep_serving_demo(workdir, tmp_path, video: dict) -> str:
    """`dvamn demo --quick --keep-serving`: drive its page in headless Chromium, then stop
    it with SIGTERM as a user's Ctrl-C would; returns its output."""
    import signal
    import warnings

    from tests.support.standin_pose import export_rtmo_colour_standin

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note on the TorchScript exporter
        pose_model = export_rtmo_colour_standin(str(tmp_path / "rtmo-colour.onnx"))
    command = [
        sys.executable, "-m", "dvamn.cli", "demo", "--quick", "--workdir", str(workdir),
        "--keep-serving", "--pose-model", pose_model,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    demo = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    seen = []
    try:
        for line in demo.stdout:
            seen.append(line)
            if line.startswith("the web page: "):
                url = line.split()[3].rstrip("/")
                break
        else:
            raise AssertionError("the demo did not print its page:\n" + "".join(seen))
        check_page_in_browser(url, os.path.join(workdir, "videos", video["video"]), video, tmp_path)
        demo.send_signal(signal.SIGTERM)
        rest, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 0, "".join(seen) + rest
    return "".join(seen) + rest


def check_page_in_browser(url: str, video_path: str, video: dict, tmp_path) -> None:
    """Upload a held-out synthetic video on the page; the ranked list shows the service's
    answer, a click plays the track's segment, the skeleton is drawn; a bad file shows the
    service's error. Saves the page's screenshot (README's is one of these)."""
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.support.browser import headless_chromium

    with open(video_path, "rb") as f:
        data = f.read()
    expected = httpx.post(
        f"{url}/match",
        params={"top_k": 20},
        files={"video": (os.path.basename(video_path), data, "video/mp4")},
        timeout=300,
    )
    assert expected.status_code == 200, expected.text
    truth = _true_track(video)
    want = {m["track_id"]: m for m in expected.json()["matches"]}[truth]
    bad = tmp_path / "not-a-video.mp4"
    bad.write_bytes(b"these are not the bytes of a video " * 40)
    refusal = httpx.post(f"{url}/match", files={"video": (bad.name, bad.read_bytes())})
    assert refusal.status_code == 415, refusal.text

    driver = headless_chromium(1280, 1000)
    try:
        wait = WebDriverWait(driver, 300)
        driver.get(f"{url}/")
        assert "/docs" in driver.find_element(
            By.LINK_TEXT, "API documentation (/docs)"
        ).get_attribute("href")
        assert not driver.find_element(By.ID, "result").is_displayed()  # nothing to show yet
        chooser = driver.find_element(By.ID, "file")
        driver.execute_script("arguments[0].style.display = 'block'", chooser)

        chooser.send_keys(str(bad))
        error = wait.until(lambda d: d.find_element(By.ID, "error").text or None)
        assert refusal.json()["detail"] in error and "cannot read this file" in error

        chooser.send_keys(video_path)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#tracks li"))
        assert not driver.find_element(By.ID, "error").is_displayed()
        item = driver.find_element(By.CSS_SELECTOR, f'#tracks li[data-track-id="{truth}"]')
        score = float(item.find_element(By.CSS_SELECTOR, ".score").get_attribute("data-score"))
        offset = float(item.find_element(By.CSS_SELECTOR, ".offset").get_attribute("data-offset"))
        assert (score, offset) == (want["score"], want["offset_s"])
        assert f"{want['score']:.4f}" in item.text

        item.click()
        audio = wait.until(
            lambda d: d.execute_script(
                "const a = document.getElementById('audio');"
                "return a.dataset.trackId && a.readyState >= 1 && !a.paused && a.currentTime > 0"
                " ? {id: a.dataset.trackId, duration: a.duration,"
                " requested: Number(a.dataset.requestedDuration)} : null"
            )
        )
        assert audio["id"] == truth
        video_s = driver.execute_script("return document.getElementById('video').duration")
        assert audio["requested"] == pytest.approx(min(60.0, video_s), abs=0.11)
        assert audio["duration"] == pytest.approx(audio["requested"], abs=0.1)

        # The overlay drew the skeleton: frames counted, and pixels on the canvas.
        drawn = wait.until(
            lambda d: d.execute_script(
                "const c = document.getElementById('overlay');"
                "if (!Number(c.dataset.drawnFrames)) return null;"
                "const p = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                "let n = 0; for (let i = 3; i < p.length; i += 4) if (p[i] > 0) n++;"
                "return n > 200 ? n : null"
            )
        )
        assert drawn > 200
        driver.execute_script("arguments[0].style.display = ''; window.scrollTo(0, 0)", chooser)
        driver.save_screenshot(str(tmp_path / "page.png"))
        print(f"screenshot of the page: {tmp_path / 'page.png'}")

        # An AIST++ keypoints2d pickle of the same dance: the page sends it as it is, and
        # lists what the service answers for it (read by the service's restricted reader).
        pickled = aist_pickle_of(video, os.path.dirname(video_path), tmp_path)
        with open(pickled, "rb") as f:
            want = httpx.post(
                f"{url}/match",
                params={"top_k": 20},
                files={"video": (os.path.basename(pickled), f.read())},
                timeout=300,
            )
        assert want.status_code == 200, want.text
        best = want.json()["matches"][0]
        driver.execute_script("arguments[0].style.display = 'block'", chooser)
        chooser.send_keys(pickled)
        # Keypoints have no video to play: the page takes the video's source away.
        wait.until(lambda d: not d.find_element(By.ID, "video").get_attribute("src"))
        assert not driver.find_element(By.ID, "video").is_displayed()
        first = driver.find_element(By.CSS_SELECTOR, "#tracks li")
        assert first.get_attribute("data-track-id") == best["track_id"]
        shown = float(first.find_element(By.CSS_SELECTOR, ".score").get_attribute("data-score"))
        assert shown == best["score"]
        assert not driver.find_element(By.ID, "error").is_displayed()
    finally:
        driver.quit()


def aist_pickle_of(video: dict, videos_dir: str, tmp_path) -> str:
    """The video's keypoint file written as an AIST++ keypoints2d pickle (60 fps)."""
    from tests.support.aist import aist_pickle_bytes, at_aist_rate

    with np.load(os.path.join(videos_dir, video["keypoints"])) as k:
        keypoints, scores = at_aist_rate(k["keypoints"], k["scores"], float(k["fps"]))
    path = tmp_path / "gBR_sBM_cAll_d04_mBR0_ch01.pkl"
    path.write_bytes(aist_pickle_bytes(keypoints, scores))
    return str(path)


def _true_track(video: dict) -> str:
    return os.path.splitext(os.path.basename(video["music"]["track_file"]))[0]


def _session_processes(session_id: int) -> list[str]:
    """Processes still alive in a session (the demo and everything it started)."""
    listing = subprocess.run(["ps", "-eo", "sid=,pid=,stat=,args="], capture_output=True, text=True)
    alive = []
    for line in listing.stdout.splitlines():
        sid, pid, stat, args = (line.split(None, 3) + [""])[:4]
        if int(sid) == session_id and not stat.startswith("Z"):
            alive.append(f"{pid} {args}")
    return alive


def test_a_stopped_demo_stops_its_ray_and_leaves_no_process(tmp_path):
    """`kill PID` (SIGTERM) while Ray Data runs: the demo stops its Ray instance, says so
    and exits 130, and nothing it started is left running."""
    import signal
    import time

    command = [sys.executable, "-m", "dvamn.cli", "demo", "--quick", "--workdir", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Its own session, so that everything the demo starts can be found by session id.
    demo = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        seen = []
        for line in demo.stdout:  # wait until Ray is up and the extraction has started
            seen.append(line)
            if line.startswith("== 2/6"):
                break
        else:
            raise AssertionError("the demo ended before extraction:\n" + "".join(seen))
        assert len(_session_processes(demo.pid)) > 1  # Ray's processes are in the session
        demo.send_signal(signal.SIGTERM)
        stdout, stderr = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    assert demo.returncode == 130, stdout[-2000:] + stderr[-3000:]
    assert "interrupted: the Ray instance and the service are stopped" in stderr
    deadline = time.monotonic() + 30
    while _session_processes(demo.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = _session_processes(demo.pid)
    if left:
        os.killpg(demo.pid, signal.SIGKILL)
    assert not left, left
