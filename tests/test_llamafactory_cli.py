import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
import transformers
import yaml

from ctscribe import environments
from ctscribe import llamafactory_cli as lf_cli
from ctscribe.llamafactory_cli import LlamaFactoryError, find_cli, has_module, run_cli, write_config


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_an_explicit_cli_wins_and_a_wrong_one_is_an_error(tmp_path, monkeypatch):
    cli = _script(tmp_path / "llamafactory-cli", "exit 0\n")
    monkeypatch.setenv(lf_cli.CLI_ENV_VAR, str(tmp_path / "elsewhere"))
    assert find_cli(cli) == cli
    with pytest.raises(LlamaFactoryError, match="not an executable"):
        find_cli()  # the environment variable names a missing file: no silent fall-through
    with pytest.raises(LlamaFactoryError, match="not an executable"):
        find_cli(tmp_path / "missing")


def test_the_lf_env_folder_is_found_and_its_absence_explained(tmp_path, monkeypatch):
    monkeypatch.delenv(lf_cli.CLI_ENV_VAR, raising=False)
    monkeypatch.setattr(environments, "checkout_root", lambda: tmp_path / "checkout")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LlamaFactoryError, match="make lf-env"):
        find_cli()
    (tmp_path / ".venv-lf" / "bin").mkdir(parents=True)
    cli = _script(tmp_path / ".venv-lf" / "bin" / "llamafactory-cli", "exit 0\n")
    assert find_cli() == cli


def test_run_cli_streams_output_and_isolates_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/ctscribe/site-packages")
    cli = _script(
        tmp_path / "cli",
        'echo "command=$1 config=$2"\necho "check=$DISABLE_VERSION_CHECK path=${PYTHONPATH:-unset}"\n',
    )
    log = tmp_path / "out.log"
    run_cli(cli, "train", tmp_path / "c.yaml", log, echo=False)
    lines = log.read_text().splitlines()
    assert lines == [f"command=train config={tmp_path / 'c.yaml'}", "check=1 path=unset"]


def test_a_failing_run_reports_its_last_lines(tmp_path):
    cli = _script(tmp_path / "cli", 'for i in $(seq 1 100); do echo "line $i"; done\necho boom >&2\nexit 3\n')
    with pytest.raises(LlamaFactoryError) as caught:
        run_cli(cli, "train", tmp_path / "c.yaml", tmp_path / "out.log", echo=False)
    message = str(caught.value)
    assert "exit 3" in message and "boom" in message and "line 100" in message
    assert "line 1\n" not in message  # only the tail, the whole output is in the log
    assert "line 1\n" in (tmp_path / "out.log").read_text()


def test_the_module_probe_answers_and_a_hung_interpreter_is_an_error(tmp_path):
    cli = _script(tmp_path / "llamafactory-cli", "exit 0\n")
    _script(tmp_path / "python", 'case "$2" in *present*) exit 0;; *) exit 1;; esac\n')
    assert has_module(cli, "present") and not has_module(cli, "absent")
    _script(tmp_path / "python", "exec sleep 30\n")
    started = time.monotonic()
    with pytest.raises(LlamaFactoryError, match=r"did not say within 0.5 s whether it can import liger"):
        has_module(cli, "liger", timeout=0.5)
    assert time.monotonic() - started < 10


def test_configs_are_written_whole(tmp_path):
    config = {"stage": "sft", "lora_rank": 8, "prompt": "中文"}
    path = write_config(tmp_path / "sub" / "train.yaml", config)
    assert yaml.safe_load(path.read_text(encoding="utf-8")) == config
    assert [p.name for p in path.parent.iterdir()] == ["train.yaml"]


@pytest.mark.slow
def test_llamafactory_reads_our_fixture_as_we_do(tiny_model_dir, llamafactory_cli, tmp_path):
    """LLaMA-Factory's older transformers must load the tiny model ctscribe saved, to the same logits."""
    from transformers import Qwen2VLForConditionalGeneration

    ids = [[151644, 872, 198, 9707, 11, 1879, 0, 151645]]
    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        ours = model(input_ids=torch.tensor(ids)).logits[0, -1]
    probe = (
        "import json, sys, torch, transformers\n"
        "from transformers import Qwen2VLForConditionalGeneration as M\n"
        "print(transformers.__version__)\n"
        "m = M.from_pretrained(sys.argv[1], dtype=torch.float32).eval()\n"
        "with torch.inference_mode():\n"
        f"    print(json.dumps(m(input_ids=torch.tensor({ids})).logits[0, -1].tolist()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(llamafactory_cli.parent / "python"), "-c", probe, str(tiny_model_dir)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    version, logits = result.stdout.splitlines()[-2:]
    assert version != transformers.__version__  # really the other environment's transformers
    theirs = torch.tensor(json.loads(logits))
    assert torch.allclose(ours, theirs, atol=1e-4), float((ours - theirs).abs().max())
