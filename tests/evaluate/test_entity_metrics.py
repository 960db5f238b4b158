"""RaTEScore and RadGraph-F1 through ctscribe: the metrics environment runs the published packages on
stand-in models of the published architectures (random weights, tests/support/entity_stand_ins.py).

A stand-in's numbers are not scores: the tests check how they are wired (per sample, in order,
identical texts scoring as the packages define a perfect match, paired comparisons), and that
ctscribe keeps them out of the reported scores. A run that cannot load the real models fails in
one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ctscribe.evaluate import entity_worker
from ctscribe.evaluate.entity_metrics import (
    ENV_DIR,
    PYTHON_ENV_VAR,
    EntityMetrics,
    EntityMetricsError,
    find_python,
    parse_metrics,
    parse_models,
)
from ctscribe.evaluate.options import ENTITY_MODELS
from ctscribe.evaluate.scores import compare_systems, score_system
from support import entity_stand_ins

CAPTIONS = [
    "The image is a CT scan of the chest. There is a mass in the left lung.",
    "The image is a CT scan of the abdomen. No acute abnormality in the liver.",
    "The image is a CT scan of the head. Small hemorrhage in the right region.",
    "The image is a CT scan of the pelvis. Normal kidney.",
]
ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="session")
def metrics_python(unavailable) -> Path:
    """The interpreter of ``make metrics-env`` (.venv-metrics); make test builds it."""
    try:
        return find_python()
    except EntityMetricsError as error:
        unavailable(str(error))


@pytest.fixture(scope="session")
def stand_ins(metrics_python, tmp_path_factory) -> dict[str, str]:
    """``--metric-model`` names -> stand-in folders, built once per session in the metrics environment."""
    out = tmp_path_factory.mktemp("entity-stand-ins")
    built = subprocess.run(
        [str(metrics_python), entity_stand_ins.__file__, str(out)], capture_output=True, text=True, check=True
    )
    return json.loads(built.stdout.strip().splitlines()[-1])


def _records(texts: list[str], references: list[str]) -> list[dict]:
    return [
        {"input": f"{i}.png", "slice": None, "id": f"r{i}", "status": "ok", "text": t, "reference": r}
        for i, (t, r) in enumerate(zip(texts, references, strict=True))
    ]


def test_metric_names_and_models_are_checked():
    assert parse_metrics("radgraph, ratescore,radgraph") == ("radgraph", "ratescore")
    with pytest.raises(ValueError, match="unknown metric bleu: choose from ratescore, radgraph"):
        parse_metrics("ratescore,bleu")
    assert parse_models([]) == ENTITY_MODELS
    assert parse_models(["radgraph=/m/rg"])["radgraph"] == "/m/rg"
    with pytest.raises(ValueError, match="NAME=MODEL"):
        parse_models(["ratescore=/m"])  # ratescore loads two models: say which


def test_a_missing_environment_is_one_clear_error(tmp_path, monkeypatch):
    from ctscribe import environments

    monkeypatch.setenv(PYTHON_ENV_VAR, str(tmp_path / "nowhere" / "python"))
    with pytest.raises(EntityMetricsError, match="not an executable python"):
        find_python()
    monkeypatch.delenv(PYTHON_ENV_VAR)
    monkeypatch.setattr(environments, "checkout_root", lambda: tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EntityMetricsError, match="make metrics-env"):
        find_python()  # never another python from the PATH
    (tmp_path / ENV_DIR / "bin").mkdir(parents=True)
    shutil.copy(sys.executable, tmp_path / ENV_DIR / "bin" / "python")
    assert find_python() == tmp_path / ENV_DIR / "bin" / "python"


# Each pair scored alone by the packages themselves, in the metrics environment: what ctscribe's
# per-sample scores must equal (scoring all pairs in one call is where an order can slip).
ONE_BY_ONE = """
import json, sys, tempfile, os
from RaTEScore import RaTEScore
from radgraph import F1RadGraph
models, pairs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
rate = RaTEScore(bert_model=models["ratescore-ner"], eval_model=models["ratescore-encoder"], use_gpu=False)
cache = tempfile.mkdtemp()
os.symlink(models["radgraph"], os.path.join(cache, "radgraph-xl"))
graph = F1RadGraph(reward_level="all", model_type="radgraph-xl", model_cache_dir=cache, cuda=-1)
out = [[rate.compute_score([p], [r])[0], *graph(refs=[r], hyps=[p])[0]] for p, r in pairs]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_scores_equal_the_packages_own_sample_by_sample(stand_ins, metrics_python):
    """In order, and an empty prediction at its own place with its own value (RaTEScore's package
    drops a text without a sentence, which would shift every later score)."""
    references = CAPTIONS * 2
    predictions = [CAPTIONS[(i * 3) % 4] for i in range(8)]
    predictions[3] = ""
    found = EntityMetrics(("ratescore", "radgraph"), stand_ins).score(predictions, references)
    assert found.stand_in
    names = ["ratescore", "radgraph_simple", "radgraph_partial", "radgraph_complete"]
    assert list(found.results) == names
    ours = [[float(found.results[name].per_sample[i]) for name in names] for i in range(8)]
    pairs = [(p, r) for p, r in zip(predictions, references, strict=True) if p]
    run = subprocess.run(
        [str(metrics_python), "-c", ONE_BY_ONE, json.dumps(stand_ins), json.dumps(pairs)],
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = json.loads(run.stdout.strip().splitlines()[-1])
    assert [row for i, row in enumerate(ours) if i != 3] == [pytest.approx(row, abs=1e-6) for row in theirs]
    assert ours[3] == [0.5, 0.0, 0.0, 0.0]  # RaTEScore's no-entity value; radgraph's empty-report value
    same = [i for i in range(8) if predictions[i] == references[i]]
    assert same and all(ours[i][1:] == [1.0, 1.0, 1.0] for i in same)  # identical graphs
    assert any(ours[i][1] < 1.0 for i in range(8) if i not in [*same, 3])


@pytest.mark.slow
def test_real_models_scores_join_the_block_and_the_paired_comparison(stand_ins, tmp_path):
    """Wiring only: the stand-ins copied without their mark, as a user's models would be read."""
    unmarked = {}
    for name, folder in stand_ins.items():
        copy = tmp_path / Path(folder).name
        shutil.copytree(folder, copy)
        config = json.loads((copy / "config.json").read_text())
        config.pop(entity_worker.STAND_IN_KEY)
        (copy / "config.json").write_text(json.dumps(config))
        unmarked[name] = str(copy)
    entity = EntityMetrics(("ratescore", "radgraph"), unmarked)
    references = CAPTIONS * 2
    shifted = [CAPTIONS[(i + 1) % 4] for i in range(8)]
    right = score_system(_records(references, references), entity=entity)
    wrong = score_system(_records(shifted, references), entity=entity)
    assert "entity_wiring_check" not in right.block
    assert right.block["ratescore"] is not None and len(right.block["ci95"]["radgraph_partial"]) == 2
    assert right.block["radgraph_simple"] == 1.0  # identical texts
    comparison = compare_systems(right, right)["radgraph_partial"]
    assert comparison == {"difference": 0.0, "ci": [0.0, 0.0], "p_value": 1.0}
    assert set(compare_systems(right, wrong)["ratescore"]) == {"difference", "ci", "p_value"}


def _split_and_predictions(tmp_path: Path) -> list[str]:
    from ctscribe.prepare.records import sft_record

    split = [sft_record(f"r{i}", f"{i}.png", caption, "test") for i, caption in enumerate(CAPTIONS)]
    (tmp_path / "test.json").write_text(json.dumps(split))
    lines = [
        json.dumps({k: v for k, v in r.items() if k != "reference"}) for r in _records(CAPTIONS, CAPTIONS)
    ]
    (tmp_path / "a.jsonl").write_text("".join(f"{line}\n" for line in lines))
    a = str(tmp_path / "a.jsonl")
    return [
        "evaluate",
        "--compare",
        a,
        a,
        "--data",
        str(tmp_path / "test.json"),
        "--out",
        str(tmp_path / "r"),
    ]


@pytest.mark.slow
def test_the_cli_runs_stand_ins_as_a_wiring_check_and_reports_no_score(stand_ins, tmp_path):
    from typer.testing import CliRunner

    from ctscribe.cli import app

    models = [f"--metric-model={name}={folder}" for name, folder in stand_ins.items()]
    args = [*_split_and_predictions(tmp_path), "--metrics", "ratescore,radgraph", *models]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    check = metrics["entity_wiring_check"]
    names = {"ratescore", "radgraph_simple", "radgraph_partial", "radgraph_complete"}
    assert check["scored"] == dict.fromkeys(names, 4)
    assert set(check["stand_in_models"]) == {"ratescore", "radgraph"}
    for block in (metrics, metrics["baseline"], metrics["comparison"]):
        assert not names & set(block)
    report = (tmp_path / "r" / "report.md").read_text()
    assert "RaTEScore" not in result.output + report and "RadGraph" not in result.output + report


@pytest.mark.slow
def test_offline_without_the_models_exits_with_one_line(metrics_python, tmp_path):
    """A user's first run with no network: the real models cannot be fetched (empty caches)."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),  # radgraph keeps its archive under the user cache
        PYTHON_ENV_VAR: str(metrics_python),
    }
    ctscribe = Path(sys.executable).with_name("ctscribe")
    ratescore = f"{ENTITY_MODELS['ratescore-ner']}, {ENTITY_MODELS['ratescore-encoder']}"
    for metric, model in (("ratescore", ratescore), ("radgraph", ENTITY_MODELS["radgraph"])):
        args = _split_and_predictions(tmp_path)
        run = subprocess.run(
            [str(ctscribe), *args, "--metrics", metric], env=env, capture_output=True, text=True, cwd=tmp_path
        )
        assert run.returncode == 2, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
        assert lines[0].startswith(f"error: {metric}: cannot load {model} (HF_HUB_OFFLINE is set)")
