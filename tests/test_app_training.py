"""The Training page through AppTest, on real detached processes of a stand-in trainer
(the one of tests/test_runs.py: train.py's file protocol, a fraction of a second per epoch)."""
from __future__ import annotations

import os
import signal

import pytest

from test_app_support import app_env, array, charts, no_exception, page, table, texts
from test_runs import FAKE_TRAIN, wait_for

from narformer_core import runs

PAGE = "pages/3_Training.py"


@pytest.fixture
def at(monkeypatch, tmp_path):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    monkeypatch.setattr(runs, "TRAIN_ENTRY", (str(script),))
    env = app_env(monkeypatch, tmp_path, None)
    yield page(PAGE)
    for info in runs.list_runs(env["NARFORMER_RUNS_DIR"]):
        if info.active and runs.pid_alive(info.pid, str(info.path)):
            os.kill(info.pid, signal.SIGKILL)     # only stand-ins these tests started


def launch(at, name: str, epochs: int, train_size: int = 20):
    at.text_input(key="train_name").set_value(name)
    at.number_input(key="train_epochs").set_value(epochs)
    at.number_input(key="train_size").set_value(train_size)
    at.button(key="train_launch").click().run()
    no_exception(at)


def tau_points(at) -> int:
    fig = next(f for f in charts(at) if f["layout"].get("yaxis", {}).get("title", {}).get("text") == "Kendall's tau")
    return max((len(array(t.get("x", []))) for t in fig["data"]), default=0)


def test_no_runs_yet(at):
    at.run()
    no_exception(at)
    assert "No runs yet" in texts(at)


def test_launch_watch_the_curve_grow_and_finish(at, monkeypatch):
    monkeypatch.setenv("FAKE_EPOCH_S", "0.25")
    at.run()
    launch(at, "demo", epochs=12)
    assert any("Started **demo**" in s.value for s in at.success)
    assert "demo" in list(table(at, "run")["run"])
    wait_for(lambda: len(runs.read_metrics(runs.get_run("demo").path)) >= 2)
    at.run()
    first = tau_points(at)
    wait_for(lambda: len(runs.read_metrics(runs.get_run("demo").path)) >= first + 3)
    at.run()
    assert tau_points(at) > first                      # the tau curve grows
    wait_for(lambda: runs.get_run("demo").state == "finished")
    at.run()
    no_exception(at)
    assert table(at, "run").set_index("run").loc["demo", "state"] == "finished"
    assert tau_points(at) == 12
    assert "fake training from epoch 0" in "\n".join(c.value for c in at.code)


def test_wall_time_axis_and_curve_choice(at):
    at.run()
    launch(at, "axes", epochs=3)
    wait_for(lambda: runs.get_run("axes").state == "finished")
    at.run()
    at.radio(key="train_x").set_value("wall_s").run()
    no_exception(at)
    titles = [f["layout"].get("xaxis", {}).get("title", {}).get("text") for f in charts(at)]
    assert titles.count("wall time (s)") == 2
    at.multiselect(key="train_curves").set_value(["EMA"]).run()
    fig = next(f for f in charts(at) if f["layout"]["yaxis"]["title"]["text"] == "Kendall's tau")
    assert all("EMA" in t["name"] for t in fig["data"])


def test_stop_and_resume_buttons(at, monkeypatch):
    monkeypatch.setenv("FAKE_EPOCH_S", "0.3")
    at.run()
    launch(at, "long", epochs=60)
    wait_for(lambda: runs.get_run("long").state == "running")
    at.run()
    assert at.selectbox(key="train_run_select").value == "long"
    assert not at.button(key="train_stop").disabled and at.button(key="train_resume").disabled
    at.button(key="train_stop").click().run()
    no_exception(at)
    stopped = wait_for(lambda: (r := runs.get_run("long")).state == "stopped" and r)
    at.run()
    assert "is **stopped**" in texts(at)
    assert at.button(key="train_stop").disabled and not at.button(key="train_resume").disabled
    monkeypatch.setenv("FAKE_EPOCH_S", "0.01")
    at.button(key="train_resume").click().run()
    no_exception(at)
    done = wait_for(lambda: (r := runs.get_run("long")).state == "finished" and r)
    assert done.epoch == 60 > stopped.epoch
    at.run()
    assert table(at, "run").set_index("run").loc["long", "state"] == "finished"


def test_crashed_run_shows_and_resumes(at, monkeypatch):
    monkeypatch.setenv("FAKE_EPOCH_S", "0.3")
    at.run()
    launch(at, "victim", epochs=100)
    info = wait_for(lambda: (r := runs.get_run("victim")).state == "running" and r)
    os.kill(info.pid, signal.SIGKILL)
    wait_for(lambda: runs.get_run("victim").state == "crashed")
    at.run()
    assert "is **crashed**" in texts(at) and not at.button(key="train_resume").disabled


def test_bad_settings_show_an_error(at):
    at.run()
    launch(at, "../escape", epochs=3)
    assert at.error and "not allowed" in at.error[0].value
    launch(at, "twice", epochs=1)
    wait_for(lambda: runs.get_run("twice").state == "finished")
    launch(at, "twice", epochs=1)
    assert at.error and "already exists" in at.error[0].value


def test_another_tab_sees_the_same_runs(at, monkeypatch):
    from test_app_support import page as new_page

    at.run()
    launch(at, "shared", epochs=2)
    wait_for(lambda: runs.get_run("shared").state == "finished")
    other = new_page(PAGE).run()                      # a second session: nothing shared but the disk
    assert "shared" in list(table(other, "run")["run"])


def test_model_size_choice_reaches_the_run(at):
    import json

    at.run()
    at.selectbox(key="train_model").set_value("tiny (d=32, 1+3 blocks)")
    launch(at, "tiny-model", epochs=1)
    spec = json.loads((runs.get_run("tiny-model").path / "launch.json").read_text())["spec"]
    assert spec["model"] == {"d_model": 32, "n_heads": 2, "ffn_dim": 64, "depths": [1, 1, 1, 1]}
