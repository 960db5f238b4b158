"""export: a merged folder that plain transformers loads and that generates what base + adapter did."""

import json

import pytest
import torch
from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

from ctscribe.conversation.records import user_message
from ctscribe.export import (
    DTYPE_TOLERANCE,
    MERGE_TOLERANCE,
    ExportError,
    adapter_to_rounding,
    export_llamafactory,
    export_merged,
    merge_checked,
    verify_merged,
    verify_written,
)
from ctscribe.fixtures.learning import LEARNING_PIXELS, clean_ct_rows
from ctscribe.generate.engine import GenerationRequest, TransformersEngine


@pytest.fixture(scope="module", params=["native", "llamafactory"])
def merged(request, trained_adapter, trained_run, tmp_path_factory):
    """A native adapter merged by ctscribe, and by ``llamafactory-cli export`` (adapters interchange),
    each in the default dtype (bf16)."""
    out = tmp_path_factory.mktemp("export") / "merged"
    if request.param == "llamafactory":
        cli = request.getfixturevalue("llamafactory_cli")
        check = export_llamafactory(trained_run / "model", trained_adapter, out, cli=cli)
        # LLaMA-Factory merges in bf16: checked from disk, within bf16's rounding
        return out, check, DTYPE_TOLERANCE["bf16"]
    check = export_merged(trained_run / "model", trained_adapter, out)
    return out, check, MERGE_TOLERANCE  # ctscribe merges in fp32, then rounds what it checked


@pytest.mark.slow
def test_the_merged_folder_is_a_plain_transformers_model(merged):
    out, check, tolerance = merged
    assert check.adapter_effect > 1e-4 and check.merge_error < tolerance
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"):
        assert (out / name).is_file(), name
    assert (out / "chat_template.jinja").is_file() or (out / "chat_template.json").is_file()
    assert not (out / "adapter_config.json").exists()
    assert not out.with_name("merged.partial").exists()
    card = (out / "README.md").read_text()
    assert "not a diagnosis" in card and "base_model:" in card and "## Recipe" in card
    model = Qwen2VLForConditionalGeneration.from_pretrained(out, dtype="auto")  # no ctscribe code involved
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert model.config.text_config.use_cache is True
    assert model.dtype == torch.bfloat16
    # The adapter's pixel budget (the tiny-cpu recipe's), for plain transformers and for ctscribe.
    assert AutoProcessor.from_pretrained(out).image_processor.size["longest_edge"] == LEARNING_PIXELS
    assert json.loads((out / "ctscribe_settings.json").read_text())["max_pixels"] == LEARNING_PIXELS
    assert json.loads((out / "ctscribe_export.json").read_text())["dtype"] == "bf16"


@pytest.mark.slow
def test_the_merged_model_reproduces_the_adapters_greedy_generations(merged, trained_adapter, trained_run):
    out, _, _ = merged
    with_adapter = TransformersEngine(trained_run / "model", trained_adapter, max_pixels=LEARNING_PIXELS)
    merged_engine = TransformersEngine(out, max_pixels=LEARNING_PIXELS)
    images = [data for _, data in clean_ct_rows(30, seed=11)[:8]]
    requests = [
        GenerationRequest([user_message("Describe this CT image.")], [with_adapter.prepare(d).image], 24)
        for d in images
    ]
    expected = [r.text for r in with_adapter.generate(requests)]
    assert [r.text for r in merged_engine.generate(requests)] == expected
    assert all(text.startswith("CT of the") for text in expected)


def test_an_untrained_adapter_is_refused(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir)
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=r".*language_model.*\.(q_proj|v_proj)$"))
    lora.save_pretrained(tmp_path / "adapter")  # LoRA's B starts at zero: this adapter changes nothing
    with pytest.raises(ExportError, match="does not change"):
        export_merged(tiny_model_dir, tmp_path / "adapter", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_non_empty_output_and_a_bad_dtype(tiny_model_dir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        export_merged(tiny_model_dir, tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match="bf16, fp16, fp32"):
        export_merged(tiny_model_dir, tmp_path, tmp_path / "new", dtype="int8")


def test_a_merge_written_by_another_tool_is_checked_against_base_plus_adapter(tiny_model_dir, tmp_path):
    """verify_merged (the check on LLaMA-Factory's merges) passes a true merge and refuses the base."""
    from peft import LoraConfig, get_peft_model

    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, target_modules=r".*language_model.*\.(q_proj|v_proj)$", init_lora_weights=False)
    lora = get_peft_model(model, config)  # random A and B: an adapter that changes the output
    lora.save_pretrained(tmp_path / "adapter")
    lora.merge_and_unload().save_pretrained(tmp_path / "merged")
    check = verify_merged(tiny_model_dir, tmp_path / "adapter", tmp_path / "merged", "fp32")
    assert check.adapter_effect > 1e-4 and check.merge_error < 1e-3
    with pytest.raises(ExportError, match="differ from base"):
        verify_merged(tiny_model_dir, tmp_path / "adapter", tiny_model_dir, "bf16")


def test_a_failed_llamafactory_export_leaves_its_log_and_no_model(tiny_model_dir, tmp_path):
    from ctscribe.llamafactory_cli import LlamaFactoryError

    cli = tmp_path / "llamafactory-cli"
    cli.write_text("#!/bin/sh\necho 'merge went wrong'\nexit 1\n")
    cli.chmod(0o755)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    out = tmp_path / "merged"
    with pytest.raises(LlamaFactoryError, match="merge went wrong"):
        export_llamafactory(tiny_model_dir, tmp_path / "adapter", out, cli=cli)
    assert not out.exists() and not out.with_name("merged.partial").exists()
    assert "merge went wrong" in out.with_name("merged.llamafactory_export.log").read_text()


def _random_adapter(model_dir, folder, scale: float = 1.0):
    """A LoRA adapter with random A and B (B times ``scale``): one that changes the output."""
    from peft import LoraConfig, get_peft_model

    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir)
    config = LoraConfig(r=4, target_modules=r".*language_model.*\.(q_proj|v_proj)$", init_lora_weights=False)
    lora = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.mul_(scale)
    lora.save_pretrained(folder)
    return lora


def test_the_check_from_disk_refuses_a_merge_that_lost_its_adapter(tiny_model_dir, tmp_path):
    """What a merge that lost its adapter writes is the base in bf16: read back, it is refused; the
    true merge written the same way passes (the control)."""
    _random_adapter(tiny_model_dir, tmp_path / "adapter")
    merged, _, _, probe = merge_checked(tiny_model_dir, tmp_path / "adapter", "bf16")
    merged = merged.to(torch.bfloat16)
    merged.save_pretrained(tmp_path / "kept")
    verify_written(tmp_path / "kept", merged, "bf16", probe)
    base = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    base.save_pretrained(tmp_path / "lost")
    with pytest.raises(ExportError, match="not the checked merge rounded to bf16"):
        verify_written(tmp_path / "lost", merged, "bf16", probe)


def test_an_adapter_that_bf16_rounds_away_is_refused_before_anything_is_written(tiny_model_dir, tmp_path):
    _random_adapter(tiny_model_dir, tmp_path / "faint", scale=1e-4)
    with pytest.raises(ExportError, match="export with --dtype fp32"):
        export_merged(tiny_model_dir, tmp_path / "faint", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    faint = _random_adapter(tiny_model_dir, tmp_path / "faint", scale=1e-4)
    assert adapter_to_rounding(faint, "bf16") < 1 < adapter_to_rounding(faint, "fp16")
    assert adapter_to_rounding(faint, "fp32") == float("inf")
    assert adapter_to_rounding(_random_adapter(tiny_model_dir, tmp_path / "real"), "bf16") > 10
