import subprocess
import sys

from rlvr.cli import main


def test_presets_lists_every_recipe(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("grpo", "dr_grpo", "dapo", "vapo", "ppo", "kimi", "gspo", "cispo", "clip_cov", "kl_cov"):
        assert name in out


def test_config_show_accepts_flags_anywhere_and_overrides(capsys):
    assert main(["config", "show", "recipes/quickstart.yaml", "optim.lr=0.5"]) == 0
    assert "optim.lr = 0.5" in capsys.readouterr().out


def test_bad_key_is_a_one_line_error_before_any_model_loads(capsys):
    assert main(["train", "recipes/quickstart.yaml", "algorithm.eps_hgh=0.3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlvr: error: unknown setting 'algorithm.eps_hgh'") and "Traceback" not in err


def test_train_help_lists_settings_with_defaults():
    out = subprocess.run(
        [sys.executable, "-m", "rlvr", "train", "--help"], capture_output=True, text=True
    ).stdout
    assert "rollout.samples_per_prompt = 8" in out and "algorithm.eps_high = 0.2" in out
