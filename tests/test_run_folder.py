"""The run folder: its files, their atomic writes, and who may import what to read them."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import ctscribe
from ctscribe import atomic
from ctscribe.run_folder import (
    COMPLETE_MARKER,
    RunSummary,
    complete_checkpoints,
    mark_checkpoint_complete,
    plot_loss,
    publish,
    read_evaluation,
    read_log,
    remove_incomplete_checkpoints,
    staging_folder,
    truncate_log,
    write_evaluation,
    write_log,
)

SRC = Path(ctscribe.__file__).parent
# Modules that read what training wrote; they must not pull in the engine that wrote it.
CONSUMERS = ("evaluate", "serve", "generate", "export.py")
FORBIDDEN = ("ctscribe.train.native", "transformers.Trainer", "transformers.trainer")


def _imports(path: Path) -> set[str]:
    """Every ``import x`` and ``from x import y`` (as ``x`` and ``x.y``) in a module, lazy ones too."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_consumer_imports_the_training_engine():
    modules = [
        p
        for name in CONSUMERS
        for p in ([SRC / name] if name.endswith(".py") else (SRC / name).rglob("*.py"))
    ]
    assert len(modules) > 10
    offending = {str(p.relative_to(SRC)): sorted(_imports(p) & set(FORBIDDEN)) for p in modules}
    assert {name: found for name, found in offending.items() if found} == {}


# Builds a report with a run folder's loss curve, then prints which training modules got imported.
_REPORT_WITH_LOSS = """
import json, sys
from pathlib import Path
from ctscribe.evaluate.report import build_report
run, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir()
build_report(out, {"model": "m", "n": 0}, [], [], run, examples=0)
assert (out / "loss.png").is_file()
print(json.dumps(sorted(m for m in sys.modules if m in FORBIDDEN)))
"""


def test_a_report_with_a_loss_curve_does_not_load_the_training_stack(tmp_path):
    """`import ctscribe.evaluate.report`, and drawing a run's loss curve with it, stay clear of the
    HF Trainer and the native engine (the curve used to be drawn by train.native)."""
    run = tmp_path / "run"
    run.mkdir()
    write_log(run / "train_log.jsonl", [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "eval_loss": 1.7}])
    code = f"FORBIDDEN = {FORBIDDEN!r}\n" + _REPORT_WITH_LOSS
    done = subprocess.run(
        [sys.executable, "-c", code, str(run), str(tmp_path / "report")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_the_log_skips_a_torn_last_line_and_truncates_on_resume(tmp_path):
    path = tmp_path / "train_log.jsonl"
    write_log(path, [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)])
    path.write_text(path.read_text() + '{"step": 4, "lo')  # a writer killed mid-line
    assert [row["step"] for row in read_log(path)] == [1, 2, 3]
    truncate_log(path, 2)
    assert path.read_text() == '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n'
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_log(path)
    assert read_log(tmp_path / "absent.jsonl") == []


def test_only_marked_checkpoints_count(tmp_path):
    for step in (2, 10, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
    mark_checkpoint_complete(tmp_path / "checkpoint-10", 10)
    mark_checkpoint_complete(tmp_path / "checkpoint-2", 2)
    assert json.loads((tmp_path / "checkpoint-10" / COMPLETE_MARKER).read_text()) == {"step": 10}
    assert complete_checkpoints(tmp_path) == [tmp_path / "checkpoint-2", tmp_path / "checkpoint-10"]
    assert remove_incomplete_checkpoints(tmp_path) == ["checkpoint-4"]
    assert not (tmp_path / "checkpoint-4").exists()


def test_run_files_are_written_atomically(tmp_path, monkeypatch):
    """The summary, log, plot and evaluation go through ctscribe.atomic (temporary file + rename)."""
    written = []
    real_write = atomic.atomic_write
    monkeypatch.setattr(
        atomic, "atomic_write", lambda path, write: written.append(path.name) or real_write(path, write)
    )
    summary = RunSummary("native", "adapter", 4, 1.5, "checkpoint-4", 1.2, 3.0, 10.0, 0.5)
    summary.write(tmp_path)
    write_log(tmp_path / "train_log.jsonl", [{"step": 4, "loss": 1.5}])
    plot_loss(tmp_path / "train_log.jsonl", tmp_path / "loss.png")
    write_evaluation(tmp_path, {"n": 3, "bleu4": 0.1})
    assert written == ["run_summary.json", "train_log.jsonl", "loss.png", "metrics.json"]
    assert RunSummary.read(tmp_path) == summary
    assert read_evaluation(tmp_path) == {"n": 3, "bleu4": 0.1}
    assert (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert not list(tmp_path.glob(".*partial"))


def test_a_summary_missing_keys_reads_them_as_none(tmp_path):
    (tmp_path / "run_summary.json").write_text(json.dumps({"final": "adapter", "train_loss": 2.0}))
    summary = RunSummary.read(tmp_path)
    assert summary.train_loss == 2.0 and summary.engine is None and summary.best_eval_loss is None
    assert RunSummary.read(tmp_path / "absent") is None


def test_the_result_folder_appears_whole(tmp_path):
    final = tmp_path / "adapter"
    final.mkdir()
    (final / "old.safetensors").write_text("old")
    staging = staging_folder(final)
    (staging / "adapter_model.safetensors").write_text("new")
    assert (final / "old.safetensors").is_file()  # untouched until the new folder is complete
    publish(staging, final)
    assert [p.name for p in final.iterdir()] == ["adapter_model.safetensors"] and not staging.exists()
    (tmp_path / "adapter.partial").mkdir()
    (tmp_path / "adapter.partial" / "torn").write_text("x")  # left by a killed run
    assert list(staging_folder(final).iterdir()) == []
