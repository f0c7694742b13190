"""W&B online without a usable API key: one input error saying how to log in or go offline, and a run directory
that the corrected command (logged in, or offline) may still start in."""

import pytest

from lit_lora.cluster.launch_checks import check_fresh_run_dir
from lit_lora.cluster.tracking import WandbRun
from lit_lora.errors import InputError


@pytest.fixture
def no_login(tmp_path, monkeypatch):
    """A machine that never logged in to W&B (no key in the environment, no netrc), online, no server."""
    import wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    for key, value in {"WANDB_MODE": "online", "HOME": str(tmp_path / "home"), "WANDB_BASE_URL": "http://127.0.0.1:9",
                       "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "NETRC": str(tmp_path / "netrc"),
                       "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
                       "WANDB_DATA_DIR": str(tmp_path / "wandb-data")}.items():
        monkeypatch.setenv(key, value)
    wandb.teardown()  # settings are read from the environment above, not kept from an earlier test
    yield monkeypatch
    wandb.teardown()


@pytest.mark.parametrize("api_key", [None, "short"], ids=["no key", "malformed key"])
def test_a_run_that_cannot_log_in_says_how_and_leaves_the_directory_free(tmp_path, no_login, api_key):
    if api_key:
        no_login.setenv("WANDB_API_KEY", api_key)
    run_dir = tmp_path / "run"
    logger = WandbRun(save_dir=str(run_dir), init_timeout=5)
    with pytest.raises(InputError) as raised:
        logger.log_hyperparams({"lr": 0.1})  # the first use starts the run
    message = str(raised.value)
    assert "wandb login" in message and "WANDB_MODE=offline" in message and "\n" not in message
    check_fresh_run_dir(run_dir, resuming=False)  # the same command, logged in, is not refused as a second run

    import wandb

    no_login.setenv("WANDB_MODE", "offline")  # the corrected command
    wandb.teardown()
    again = WandbRun(save_dir=str(run_dir))
    run_id = again.experiment.id
    again.experiment.finish()
    assert (run_dir / "wandb_run_id").read_text().strip() == run_id
