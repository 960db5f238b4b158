"""Merge a LoRA adapter into its base model and write a standalone Hugging Face folder.

The result is a plain folder of the base's own model class (safetensors, processor, chat template,
generation config, model card): transformers, vLLM and LLaMA-Factory load it with no
ctscribe code. Export checks its own work on a probe input before writing anything:

1. the adapter must change the base model's logits: an untrained LoRA (B = 0) or an adapter put on
   the wrong base changes nothing, and a merged copy of such a model proves nothing;
2. the adapter must survive the export's dtype: it must change the adapted weights more than
   rounding them to that dtype does (a bf16 export of deltas below bf16's resolution would be the
   base again, with rounding noise);
3. the merged model's logits must equal base + adapter within a tolerance (fp32 arithmetic), so a
   merge that silently dropped or double-applied a layer fails here, not in front of a clinician;
4. what was written is read back from disk in its dtype: every weight must be exactly the checked
   merge rounded to that dtype, and its logits base + adapter's within the dtype's rounding.

The folder is written under a temporary name and renamed when complete, so a killed export never
leaves something that looks like a model. It carries the adapter's settings (pixel budget, prompts;
:mod:`ctscribe.model_settings`) in its processor config, so plain transformers and vLLM use them.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ctscribe import CLINICAL_NOTICE, __version__
from ctscribe.conversation.prompts import DEFAULT_PROMPTS
from ctscribe.conversation.records import user_message
from ctscribe.generate.engine import check_model_reference
from ctscribe.model_settings import ModelSettings, record_settings, recorded_settings, resolve_adapter
from ctscribe.models import Family, family_for
from ctscribe.run_folder import RECIPE, RunSummary, read_data_stats, read_evaluation
from ctscribe.train.options import ExportOptions

log = logging.getLogger(__name__)

DTYPES = ("bf16", "fp16", "fp32")
TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}  # names in torch and LLaMA-Factory
PROBE_PROMPT = DEFAULT_PROMPTS["en"]  # the check asks what predict asks by default
# The adapter must move some logit by more than this share of the largest base logit.
MIN_ADAPTER_EFFECT = 1e-4
# Merged vs base + adapter, both fp32: merging reorders float sums, so allow rounding, nothing more.
MERGE_TOLERANCE = 1e-3
# A merge written in a 16-bit type by another tool is checked after that rounding (bf16 keeps 8 bits).
DTYPE_TOLERANCE = {"fp32": MERGE_TOLERANCE, "fp16": 1e-2, "bf16": 5e-2}


class ExportError(ValueError):
    """The export's own check failed; the message says which and by how much."""


@dataclass(frozen=True)
class ExportCheck:
    adapter_effect: float  # max |logits(base + adapter) - logits(base)| on the probe, relative
    merge_error: float  # max |logits(merged) - logits(base + adapter)|, relative


def probe_image(size: int = 224) -> Image.Image:
    """A deterministic CT-like probe: a bright ellipse (body) with a brighter disc inside, on black."""
    y, x = np.mgrid[0:size, 0:size] / size
    body = ((x - 0.5) / 0.42) ** 2 + ((y - 0.5) / 0.32) ** 2 < 1
    lesion = (x - 0.62) ** 2 + (y - 0.45) ** 2 < 0.004
    grey = np.where(body, 110 + 60 * x, 0) + np.where(lesion, 80, 0)
    return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), mode="L").convert("RGB")


def _probe_inputs(processor):
    prompt = processor.apply_chat_template([user_message(PROBE_PROMPT)], add_generation_prompt=True)
    return processor(text=[prompt], images=[probe_image()], return_tensors="pt")


def _logits(model, inputs):
    import torch

    with torch.inference_mode():
        return model(**inputs).logits.float()


def _adapted(base: str | Path, adapter_dir: Path):
    """Base + adapter in fp32 with the adapter's effect on the probe checked.

    Returns ``(peft_model, processor, probe_inputs, adapted_logits, scale, effect)``; ``scale`` (the
    largest logit, at least 1) makes every difference relative.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoProcessor

    check_model_reference(base)
    family = family_for(base)  # an unsupported base is refused before anything loads
    processor = AutoProcessor.from_pretrained(str(base))
    inputs = _probe_inputs(processor)
    model = family.model_class().from_pretrained(str(base), dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    with model.disable_adapter():
        base_logits = _logits(model, inputs)
    adapted = _logits(model, inputs)
    scale = max(1.0, float(adapted.abs().max()))
    effect = float((adapted - base_logits).abs().max()) / scale
    if effect <= MIN_ADAPTER_EFFECT:
        raise ExportError(
            f"the adapter does not change the base model's output (max logit change {effect:.2e} of the "
            f"largest logit): it is untrained, or {adapter_dir} was not trained on {base}"
        )
    return model, processor, inputs, adapted, scale, effect


def _merge_error(merged, inputs, adapted, scale: float, tolerance: float) -> float:
    """How far the merged model's probe logits are from base + adapter; raises past ``tolerance``."""
    error = float((_logits(merged, inputs) - adapted).abs().max()) / scale
    if error > tolerance:
        raise ExportError(
            f"the merged model's logits differ from base + adapter by {error:.2e} of the largest logit "
            f"(tolerance {tolerance:g}); refusing to write it"
        )
    return error


def _torch_dtype(dtype: str):
    import torch

    return getattr(torch, TORCH_DTYPES[dtype])


def adapter_to_rounding(peft_model, dtype: str) -> float:
    """How much the adapter changes the adapted weights, relative to how much rounding base + adapter
    to ``dtype`` changes them (Frobenius norms over every adapted layer; infinite when rounding
    changes nothing, as in fp32).

    Below 1, rounding moves the weights more than the adapter did: the export would be the base model
    with noise. One layer at a time, so it costs one layer's memory.
    """
    import torch
    from peft.tuners.lora import LoraLayer

    target = _torch_dtype(dtype)
    if target == torch.float32:  # the merge is fp32 already: nothing to round
        return float("inf")
    change = rounding = 0.0
    with torch.no_grad():  # a measurement: no autograd graph per layer
        for module in peft_model.modules():
            if isinstance(module, LoraLayer):
                weight = module.get_base_layer().weight
                for name in module.active_adapters:
                    delta = module.get_delta_weight(name)
                    adapted = weight + delta
                    change += float(delta.pow(2).sum())
                    rounding += float((adapted.to(target).float() - adapted).pow(2).sum())
    return (change / rounding) ** 0.5 if rounding else float("inf")


def merge_checked(base: str | Path, adapter_dir: Path, dtype: str = "fp32"):
    """Load base + adapter in fp32, check the adapter's effect (also after rounding to ``dtype``),
    merge, check the merge.

    Returns ``(merged_model, processor, check, probe)``, ``probe`` being what :func:`verify_written`
    compares against; raises :class:`ExportError` when a check fails.
    """
    model, processor, inputs, adapted, scale, effect = _adapted(base, adapter_dir)
    kept = adapter_to_rounding(model, dtype)
    if kept < 1:
        raise ExportError(
            f"rounding to {dtype} changes the adapted weights more than the adapter does (adapter/rounding "
            f"{kept:.2f}): a {dtype} export would be the base model with noise; export with --dtype fp32"
        )
    merged = model.merge_and_unload()
    error = _merge_error(merged, inputs, adapted, scale, MERGE_TOLERANCE)
    return merged, processor, ExportCheck(adapter_effect=effect, merge_error=error), (inputs, adapted, scale)


def verify_written(folder: Path, merged, dtype: str, probe: tuple) -> None:
    """Read the written model back in its dtype and refuse it unless it is the checked merge.

    ``merged`` is the in-memory merge already rounded to ``dtype``: every weight read back must equal
    it exactly (so no tensor was dropped, renamed or left at the base's value on the way to disk), and
    the reloaded model's probe logits, computed in ``dtype``, must be base + adapter's (``probe``)
    within that dtype's rounding.
    """
    model_class = family_for(folder).model_class()
    reloaded = model_class.from_pretrained(str(folder), dtype=_torch_dtype(dtype)).eval()
    expected = merged.state_dict()
    wrong = [
        name
        for name, tensor in reloaded.state_dict().items()
        if name not in expected or not bool((tensor == expected[name]).all())
    ]
    if wrong:
        raise ExportError(
            f"{len(wrong)} weight tensor(s) read back from {folder} are not the checked merge rounded to "
            f"{dtype} (first: {wrong[0]}); refusing it"
        )
    inputs, adapted, scale = probe
    _merge_error(reloaded, inputs, adapted, scale, DTYPE_TOLERANCE[dtype])


def verify_merged(base: str | Path, adapter_dir: Path, merged_dir: Path, dtype: str) -> ExportCheck:
    """Check a model merged by another tool (LLaMA-Factory) against base + adapter, as export does.

    Loading it here also proves that ctscribe's transformers reads what the other tool wrote. The
    merged weights were rounded to ``dtype``, so the tolerance is that type's rounding, and the merged
    model must also sit closer to base + adapter than the base alone does.
    """
    import torch

    model, _, inputs, adapted, scale, effect = _adapted(base, adapter_dir)
    del model
    merged = family_for(merged_dir).model_class().from_pretrained(str(merged_dir), dtype=torch.float32).eval()
    error = _merge_error(merged, inputs, adapted, scale, min(DTYPE_TOLERANCE[dtype], effect / 2))
    return ExportCheck(adapter_effect=effect, merge_error=error)


def model_card(family: Family, base: str, adapter_dir: Path, dtype: str, check: ExportCheck) -> str:
    """README.md for the merged model (of ``family``): what it is, what it was trained on, how well,
    and its limits."""
    run_dir = adapter_dir.parent
    recipe_path = run_dir / RECIPE
    recipe = recipe_path.read_text() if recipe_path.is_file() else None
    summary = RunSummary.read(run_dir)
    stats = read_data_stats(run_dir)
    metrics = read_evaluation(run_dir)  # what `ctscribe evaluate --run-dir` kept there
    lines = [
        "---",
        f"base_model: {base}",
        "library_name: transformers",
        "pipeline_tag: image-text-to-text",
        f"tags: [ctscribe, {family.model_type.replace('_', '-')}, ct, radiology, lora-merged]",
        "---",
        "",
        "# CT description model (ctscribe)",
        "",
        f"> **Intended use: assistance, not diagnosis.** {CLINICAL_NOTICE}",
        "",
        f"{family.name} `{base}` with the LoRA adapter `{adapter_dir}` merged in, saved as {dtype} by "
        f"ctscribe {__version__}. Load it with plain transformers "
        f"(`{family.model_class().__name__}.from_pretrained`, `AutoProcessor.from_pretrained`), "
        f"vLLM or LLaMA-Factory (template `{family.llamafactory_template}`).",
        "",
        "## Training data",
        "",
        "CT images of MedTrinity-25M prepared by `ctscribe prepare` (CT-only, cleaned captions, "
        "splits without leakage)."
        + (f" Samples used: {stats.get('train')} train, {stats.get('val')} validation." if stats else ""),
        "",
        "## Results",
        "",
    ]
    if summary:
        lines.append(f"- final training loss: {summary.train_loss}")
        if summary.best_eval_loss is not None:
            lines.append(f"- best validation loss: {summary.best_eval_loss}")
    if metrics:
        keys = ("n", "bleu4", "rouge_l", "cider")
        lines.append("- evaluation: " + ", ".join(f"{k} {metrics[k]}" for k in keys if k in metrics))
    if not summary and not metrics:
        lines.append(
            "No training summary or evaluation found next to the adapter; "
            "`ctscribe evaluate --run-dir RUN_DIR` keeps its results there."
        )
    lines += [
        f"- export check: the adapter moves the probe logits by {check.adapter_effect:.3g} (relative); "
        f"merged vs base + adapter differ by {check.merge_error:.2g}",
        "",
        "## Limitations",
        "",
        "- Trained on MedTrinity-25M's machine-generated captions, not radiologists' reports; it can "
        "name findings that are not there and miss findings that are.",
        "- Single 2D slices only; no prior studies, no clinical context.",
        "- Every output must be read by a qualified clinician before any use in care.",
    ]
    if recipe:
        lines += ["", "## Recipe", "", "```yaml", recipe.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def _claim_out(out: Path, force: bool) -> Path:
    """The ``.partial`` folder to write into; refuses a non-empty ``out`` unless forced."""
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder or pass --force")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    return partial


def carried_settings(base: str | Path, adapter_dir: Path) -> ModelSettings:
    """What the export records: the adapter's settings (else the base's, else the defaults, never the
    base checkpoint's own processor budget)."""
    return recorded_settings(base, adapter_dir) or ModelSettings()


def _publish(
    partial: Path, out: Path, engine: str, base: str | Path, adapter_dir: Path, dtype: str, check: ExportCheck
) -> None:
    """Add the model card and export record, then rename: ``out`` appears only when complete."""
    record = {"engine": engine, "base": str(base), "adapter": str(adapter_dir), "dtype": dtype}
    record.update(asdict(check))
    card = model_card(family_for(partial), str(base), adapter_dir, dtype, check)
    (partial / "README.md").write_text(card)
    (partial / "ctscribe_export.json").write_text(json.dumps(record, indent=2))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)


def export_merged(
    base: str | Path,
    adapter: str | Path,
    out: str | Path,
    dtype: str = ExportOptions.dtype,
    force: bool = False,
) -> ExportCheck:
    """Merge, check and write the model folder ``out``; see the module docstring."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    out = Path(out)
    partial = _claim_out(out, force)
    adapter_dir = resolve_adapter(adapter)
    merged, processor, check, probe = merge_checked(base, adapter_dir, dtype)
    log.info(
        "export check passed: adapter effect %.3g, merge error %.2g", check.adapter_effect, check.merge_error
    )

    merged = merged.to(_torch_dtype(dtype))
    # Training turns the KV cache off; generation needs it. Models with a text config keep the flag there.
    getattr(merged.config, "text_config", merged.config).use_cache = True
    try:
        merged.save_pretrained(str(partial), safe_serialization=True)
        processor.save_pretrained(str(partial))
        record_settings(partial, carried_settings(base, adapter_dir))
        verify_written(partial, merged, dtype, probe)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # a refused or broken export leaves no model behind
        raise
    log.info("read back from disk in %s: the checked merge", dtype)
    _publish(partial, out, "ctscribe", base, adapter_dir, dtype, check)
    return check


def export_llamafactory(
    base: str | Path,
    adapter: str | Path,
    out: str | Path,
    dtype: str = ExportOptions.dtype,
    force: bool = False,
    cli: str | Path | None = None,
) -> ExportCheck:
    """Merge with ``llamafactory-cli export`` (a YAML file, no web UI), then check it as export does.

    The YAML and LLaMA-Factory's output are kept in the folder (``llamafactory_export.yaml``,
    ``llamafactory_export.log``) so the merge can be repeated without ctscribe.
    """
    from ctscribe.llamafactory_cli import find_cli, run_cli, write_config

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    executable = find_cli(cli)
    out = Path(out)
    partial = _claim_out(out, force)
    adapter_dir = resolve_adapter(adapter)
    check_model_reference(base)
    family = family_for(base)  # an unsupported base is refused before LLaMA-Factory runs
    config = {
        "model_name_or_path": str(Path(base).resolve()) if Path(base).exists() else str(base),
        "adapter_name_or_path": str(adapter_dir.resolve()),
        "template": family.llamafactory_template,
        "finetuning_type": "lora",
        "export_dir": str(partial.resolve()),
        "export_device": "cpu",
        "export_size": 5,
        "infer_dtype": TORCH_DTYPES[dtype],
    }
    # The log sits beside OUT while LLaMA-Factory runs, so a failed export leaves it where the error
    # message points; a finished one moves into OUT with the YAML.
    log_path = out.with_name(out.name + ".llamafactory_export.log")
    log_path.unlink(missing_ok=True)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            config_path = write_config(Path(scratch) / "llamafactory_export.yaml", config)
            run_cli(executable, "export", config_path, log_path)
            shutil.copy2(config_path, partial / config_path.name)
        check = verify_merged(base, adapter_dir, partial, dtype)
        record_settings(partial, carried_settings(base, adapter_dir))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # a refused or broken merge leaves no model behind
        raise
    shutil.move(log_path, partial / "llamafactory_export.log")
    log.info(
        "llamafactory export checked: adapter effect %.3g, merge error %.2g",
        check.adapter_effect,
        check.merge_error,
    )
    _publish(partial, out, "llamafactory", base, adapter_dir, dtype, check)
    return check
