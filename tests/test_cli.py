import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ctscribe.cli import app

runner = CliRunner()


def test_help_lists_the_steps():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("fixtures", "demo"):
        assert command in result.output
    fixtures = runner.invoke(app, ["fixtures", "--help"])
    assert "tiny-model" in fixtures.output and "phantom" in fixtures.output


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "ctscribe"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ctscribe ")


def test_fixtures_commands_write_loadable_outputs(tmp_path):
    result = runner.invoke(app, ["fixtures", "phantom", str(tmp_path / "p"), "--rows", "4", "--seed", "1"])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "p" / "truth.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["modality"] == "CT"
    result = runner.invoke(app, ["fixtures", "tiny-model", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_bad_input_is_one_clear_line_without_traceback(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "x").write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "ctscribe", "fixtures", "tiny-model", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "error:" in result.stderr and "not empty" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)  # the whole demo (fixtures, prepare, train, evaluate), then its cached rerun
def test_demo_runs_end_to_end_offline(tmp_path):
    command = [sys.executable, "-m", "ctscribe", "demo", "--out", str(tmp_path / "demo"), "--max-steps", "20"]
    offline = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    first = subprocess.run(command, capture_output=True, text=True, env=offline, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "ctscribe prepare" in first.stdout and "What it learned" in first.stdout
    assert "not a diagnosis" in first.stdout
    assert (tmp_path / "demo" / "run" / "model" / "model.safetensors").is_file()
    # A second run reuses the fixtures and the trained model.
    stamp = (tmp_path / "demo" / "run" / "model" / "model.safetensors").stat().st_mtime_ns
    second = subprocess.run(command, capture_output=True, text=True, env=offline, timeout=300)
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "demo" / "run" / "model" / "model.safetensors").stat().st_mtime_ns == stamp


def test_backend_options_that_do_not_fit_are_usage_errors(tmp_path):
    args = ["predict", str(tmp_path / "x.png"), "--model", "m", "--out", str(tmp_path / "out.jsonl")]
    result = runner.invoke(app, [*args, "--backend", "openai"], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "--backend openai needs --base-url" in result.output


def test_evaluate_scores_the_baseline_at_the_fine_tuned_models_budget(monkeypatch, tmp_path):
    """The budget the evaluated model records is the one both engines get (engines stubbed: only the
    wiring between the record, the model and the baseline is under test)."""
    import ctscribe.cli as cli
    import ctscribe.evaluate.report as report
    import ctscribe.evaluate.run as run
    from ctscribe.model_settings import ModelSettings, record_settings

    budgets = {}

    def engine(backend, model, adapter, settings, base_url=None):
        budgets[model] = settings.max_pixels

    def evaluation(make_engine, data, out, *, make_baseline=None, **options):
        make_engine()
        make_baseline()
        return {}

    monkeypatch.setattr(cli, "_backend", engine)
    monkeypatch.setattr(run, "run_evaluation", evaluation)
    monkeypatch.setattr(report, "comparison_rows", lambda metrics: [])
    model = tmp_path / "export"
    model.mkdir()
    (model / "processor_config.json").write_text("{}")
    record_settings(model, ModelSettings(max_pixels=50176))
    args = ["evaluate", "--model", str(model), "--data", str(tmp_path / "test.json"), "--out", str(tmp_path)]
    result = runner.invoke(app, [*args, "--baseline", "Qwen/Qwen2-VL-2B-Instruct"])
    assert result.exit_code == 0, result.output
    assert budgets == {str(model): 50176, "Qwen/Qwen2-VL-2B-Instruct": 50176}
