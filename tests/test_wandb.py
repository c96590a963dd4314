from __future__ import annotations

import io
import os
import sys
import time
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

from utils.training import metric_names as M
from utils.training import wandb_setup
from utils.training.metrics_tracker import MetricsTracker
from utils.training.training_config import TrainingConfig
from utils.training.wandb_setup import (
    DisabledRun,
    can_prompt,
    find_api_key,
    init_wandb,
    server_reachable,
    setup_wandb,
)

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def wandb_env(tmp_path, monkeypatch):
    """No network, nothing in ~/.cache or ~/.config, no key, not in Colab, nobody at a terminal."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name, folder in (("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"),
                         ("WANDB_DATA_DIR", "data"), ("WANDB_DIR", "wandb-dir")):
        monkeypatch.setenv(name, str(tmp_path / folder))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # not the home folder's ~/.netrc
    monkeypatch.setattr(wandb_setup, "_we_set_offline", False)
    monkeypatch.setattr(wandb_setup, "_remembered", None)
    monkeypatch.setattr(wandb_setup, "in_colab", lambda: False)
    # The server "answers" unless a test says otherwise; no test reaches the network.
    monkeypatch.setattr(wandb_setup, "server_reachable", lambda url, timeout=3.0: True)
    monkeypatch.setattr(sys, "stdin", io.StringIO())


def config(**changes):
    base = dict(run_name="wb-run", use_wandb=True, wandb_project="proj", wandb_entity="team",
                wandb_tags=["a", "b"], wandb_notes="a note")
    base.update(changes)
    return TrainingConfig(**base)


class FakeWandb(types.ModuleType):
    """Stands in for the wandb package: records each init with the environment's WANDB_MODE."""

    def __init__(self, online_error: Exception | None = None):
        super().__init__("wandb")
        error = type("Error", (Exception,), {})
        self.errors = SimpleNamespace(Error=error, CommError=type("CommError", (error,), {}))
        self.online_error = online_error(self) if callable(online_error) else online_error
        self.calls: list[dict] = []
        self.teardowns = 0

    def Settings(self, **kwargs):  # noqa: N802 - the real one is a class
        return SimpleNamespace(**kwargs)

    def init(self, mode, settings, **kwargs):
        self.calls.append({"mode": mode, "settings": settings,
                           "env_mode": os.environ.get("WANDB_MODE"), **kwargs})
        if mode == "online" and self.online_error is not None:
            raise self.online_error
        return SimpleNamespace(id="fake1", offline=mode == "offline", url="https://wandb.example",
                               settings=SimpleNamespace(sync_dir="/tmp/sync-dir"))

    def teardown(self):
        self.teardowns += 1


@pytest.fixture
def fake_wandb(monkeypatch):
    def install(online_error=None):
        fake = FakeWandb(online_error)
        monkeypatch.setitem(sys.modules, "wandb", fake)
        return fake

    return install


def test_tracking_off_gives_a_do_nothing_stand_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = init_wandb(config(use_wandb=False))
    assert isinstance(run, DisabledRun) and run.id is None
    tracker = MetricsTracker(wandb_run=run, track_gpu=False)
    tracker.log_batch(1, 2.0, 1e-3, 1.0, 32)
    tracker.log_epoch({M.EPOCH: 1, M.VAL_LOSS: 1.0})
    tracker.finish()
    assert run.summary["status"] == "completed"
    assert list(tmp_path.iterdir()) == []  # nothing written anywhere


def test_real_offline_run_holds_the_history_and_never_the_key(tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)  # a key, but WANDB_MODE=offline wins
    run = init_wandb(config(), run_id=3, directory=tmp_path / "ws")
    assert run.offline and run.id
    tracker = MetricsTracker(wandb_run=run)
    for step in range(1, 5):
        tracker.log_batch(step, 3.0 / step, 1e-3, 0.7, 64, epoch=1 + (step > 2))
        if step % 2 == 0:
            tracker.log_epoch({M.EPOCH: step // 2, M.STEP: step, M.TRAIN_LOSS: 1.5,
                               M.VAL_LOSS: 1.4})
    tracker.finish("completed", tracker.final_summary())

    (run_dir,) = (tmp_path / "ws" / "wandb").glob("offline-run-*")
    (history,) = run_dir.glob("*.wandb")
    names = [n.encode() for n in (M.BATCH_LOSS, M.VAL_LOSS, M.TRAIN_PERPLEXITY, "db_run_id")]
    # wandb-core's writer can lag finish() on a busy machine; the records arrive within seconds.
    deadline = time.monotonic() + 20
    while not all(n in history.read_bytes() for n in names) and time.monotonic() < deadline:
        time.sleep(0.1)
    data = history.read_bytes()
    for name in names:
        assert name in data, name
    out = capsys.readouterr().out
    assert f"wandb sync {run_dir}" in out and "WANDB_MODE=offline" in out
    assert FAKE_KEY not in out
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path


def test_no_key_and_nobody_to_ask_goes_offline_before_init(fake_wandb, monkeypatch, capsys,
                                                            tmp_path):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setattr("getpass.getpass", lambda prompt="": pytest.fail("asked nobody"))
    fake = fake_wandb()
    run = init_wandb(config(), directory=tmp_path)
    assert run.offline
    (call,) = fake.calls
    assert call["mode"] == "offline" and call["env_mode"] == "offline"  # env set before init
    out = capsys.readouterr().out
    assert "logging offline" in out and "cannot ask" in out and "wandb sync /tmp/sync-dir" in out


def test_an_online_start_that_fails_falls_back_offline(fake_wandb, monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    fake = fake_wandb(lambda wb: wb.errors.CommError(f"timed out (key {FAKE_KEY})"))
    run = init_wandb(config(), directory=tmp_path)
    online, offline = fake.calls
    assert online["mode"] == "online" and online["settings"].api_key == FAKE_KEY
    assert 0 < online["settings"].init_timeout <= 30  # bounded: never holds training up
    assert fake.teardowns == 1
    assert offline["mode"] == "offline" and offline["env_mode"] == "offline" and run.offline
    out = capsys.readouterr().out
    assert "could not start an online run: CommError" in out and FAKE_KEY not in out


def test_run_settings_come_from_the_config(fake_wandb, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.delenv("WANDB_MODE")
    fake = fake_wandb()
    run = init_wandb(config(), run_id=12, resume_id="abc", directory=tmp_path / "ws")
    assert not run.offline
    (call,) = fake.calls
    assert (call["project"], call["entity"], call["name"]) == ("proj", "team", "wb-run")
    assert call["tags"] == ["a", "b"] and call["notes"] == "a note"
    assert call["id"] == "abc" and call["resume"] == "allow"
    assert call["config"]["db_run_id"] == 12 and call["config"]["learning_rate"] == 3e-4
    assert FAKE_KEY not in repr(call["config"])
    assert Path(call["dir"]) == (tmp_path / "ws").resolve()
    assert call["reinit"] == "finish_previous"  # never the previous cell's run handed back


def test_online_again_after_an_offline_fallback(fake_wandb, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE")
    fake = fake_wandb()
    init_wandb(config(), directory=tmp_path)  # no key: offline, and WANDB_MODE=offline is ours
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    init_wandb(config(), directory=tmp_path)
    assert [c["mode"] for c in fake.calls] == ["offline", "online"]
    assert "WANDB_MODE" not in os.environ


def test_wandb_mode_disabled_in_the_environment(fake_wandb, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    fake = fake_wandb()
    assert isinstance(init_wandb(config()), DisabledRun) and fake.calls == []
    assert "WANDB_MODE=disabled" in capsys.readouterr().out


def fake_colab(monkeypatch, behaviour):
    userdata = types.ModuleType("google.colab.userdata")
    userdata.SecretNotFoundError = type("SecretNotFoundError", (Exception,), {})
    userdata.NotebookAccessError = type("NotebookAccessError", (Exception,), {})

    def get(name):
        assert name == "WANDB_API_KEY"
        if isinstance(behaviour, str):
            return behaviour
        raise getattr(userdata, behaviour.__name__)(name)

    userdata.get = get
    colab = types.ModuleType("google.colab")
    colab.userdata = userdata
    google = types.ModuleType("google")
    google.colab = colab
    for name, module in (("google", google), ("google.colab", colab),
                         ("google.colab.userdata", userdata)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(wandb_setup, "in_colab", lambda: True)


def test_key_from_colab_secrets_is_not_put_in_the_environment(fake_wandb, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE")
    fake_colab(monkeypatch, FAKE_KEY)
    fake = fake_wandb()
    init_wandb(config(), directory=tmp_path)
    (call,) = fake.calls
    assert call["mode"] == "online" and call["settings"].api_key == FAKE_KEY
    assert FAKE_KEY not in os.environ.values()


@pytest.mark.parametrize("error, says", [("SecretNotFoundError", "no WANDB_API_KEY secret"),
                                         ("NotebookAccessError", "Notebook access")])
def test_colab_secret_problems_are_explained(monkeypatch, error, says):
    fake_colab(monkeypatch, type(error, (), {}))
    key, why = find_api_key(interactive=False)
    assert key is None and says in why


def test_prompt_only_when_a_person_can_answer(monkeypatch):
    answers = iter([FAKE_KEY + "  ", ""])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert find_api_key(interactive=True) == (FAKE_KEY, "the prompt")
    assert find_api_key(interactive=True) == (None, "no API key entered")

    no_stdin = type("StdinNotImplementedError", (Exception,), {})

    def headless(prompt=""):
        raise no_stdin("getpass was called, but this frontend does not support input requests.")

    monkeypatch.setattr("getpass.getpass", headless)
    assert find_api_key(interactive=True) == (None, "no API key entered")
    monkeypatch.setattr("getpass.getpass", lambda prompt="": pytest.fail("asked nobody"))
    assert find_api_key()[0] is None  # stdin is not a terminal here


@pytest.mark.parametrize("allow_stdin", [False, True])
def test_can_prompt_asks_the_kernel(monkeypatch, allow_stdin):
    kernel = SimpleNamespace(_allow_stdin=allow_stdin)
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: SimpleNamespace(kernel=kernel)
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    assert can_prompt() is allow_stdin


# --- the W&B cell: setup_wandb --------------------------------------------------------------


def test_setup_without_a_key_says_offline_and_how_to_sync(fake_wandb, monkeypatch, capsys,
                                                           workspace):
    monkeypatch.delenv("WANDB_MODE")
    fake = fake_wandb()
    assert setup_wandb(config(), workspace) == "offline"
    out = capsys.readouterr().out
    assert fake.calls == []  # the run starts with training, not here
    assert "runs will log offline: no API key ($WANDB_API_KEY is not set" in out
    assert "~/.netrc has none" in out and "cannot ask" in out
    assert f"saved under {workspace.root / 'wandb'}" in out and "wandb sync" in out
    assert "set $WANDB_API_KEY or run `wandb login`" in out


def test_setup_asks_once_and_the_run_uses_that_key(fake_wandb, monkeypatch, capsys, workspace):
    monkeypatch.delenv("WANDB_MODE")
    answers = iter([FAKE_KEY])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    fake = fake_wandb()
    assert setup_wandb(config(), workspace, interactive=True) == "online"
    out = capsys.readouterr().out
    assert "API key from the prompt; runs will log online to team/proj" in out
    monkeypatch.setattr("getpass.getpass", lambda prompt="": pytest.fail("asked twice"))
    run = init_wandb(config(), directory=workspace.root, interactive=True)
    (call,) = fake.calls
    assert call["mode"] == "online" and call["settings"].api_key == FAKE_KEY and not run.offline
    assert FAKE_KEY not in out + capsys.readouterr().out


def test_setup_with_tracking_off_says_so(capsys):
    assert setup_wandb(config(use_wandb=False)) == "off"
    assert "W&B: off" in capsys.readouterr().out


def test_a_key_without_network_goes_offline_without_trying_online(fake_wandb, monkeypatch,
                                                                   capsys, tmp_path):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.invalid")
    probed = []
    monkeypatch.setattr(wandb_setup, "server_reachable",
                        lambda url, timeout=3.0: probed.append(url) or False)
    fake = fake_wandb()
    assert setup_wandb(config(), None) == "offline"
    setup_out = capsys.readouterr().out
    assert "the W&B server https://wandb.invalid does not answer (no network?)" in setup_out
    run = init_wandb(config(), directory=tmp_path)
    (call,) = fake.calls  # no online attempt: W&B never says a key is "configured" for it
    assert call["mode"] == "offline" and run.offline and fake.teardowns == 0
    out = capsys.readouterr().out
    assert "does not answer (no network?); the API key from $WANDB_API_KEY was not used" in out
    assert "wandb sync /tmp/sync-dir" in out and FAKE_KEY not in setup_out + out
    assert probed == ["https://wandb.invalid"] * 2


def test_key_from_netrc_written_by_wandb_login(monkeypatch, tmp_path):
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    assert find_api_key(interactive=False, base_url="https://api.wandb.ai") == (
        FAKE_KEY, "~/.netrc (wandb login)")
    assert find_api_key(interactive=False, base_url="https://other.example")[0] is None


def test_server_probe_on_a_closed_port_says_no_quickly(monkeypatch):
    import socket

    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # a proxy would answer for the closed port

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    assert not server_reachable(f"http://127.0.0.1:{port}", timeout=2)
    assert time.monotonic() - started < 5
