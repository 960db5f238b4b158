"""The generation engine: batching must not change what a request gets."""

import pytest

from ctscribe.conversation.boxes import GridBox, format_box
from ctscribe.conversation.records import user_message
from ctscribe.fixtures.learning import LEARNING_PIXELS, clean_ct_rows
from ctscribe.generate.engine import GenerationRequest, TransformersEngine


@pytest.fixture(scope="module")
def engine(trained_run):
    return TransformersEngine(trained_run / "model", max_pixels=LEARNING_PIXELS)


def _requests(engine, n):
    images = [engine.prepare(data).image for _, data in clean_ct_rows(40, seed=5)[:n]]
    prompts = ["Describe this CT image.", "What does this CT scan show? Describe the findings."]
    return [
        GenerationRequest([user_message(prompts[i % 2])], [image], max_new_tokens=12 + i % 3)
        for i, image in enumerate(images)
    ]


@pytest.mark.slow
def test_a_batch_gives_each_request_what_it_gets_alone(engine):
    requests = _requests(engine, 6)
    alone = [engine.generate([r])[0] for r in requests]
    engine.batches.clear()
    batched = engine.generate(requests)
    assert engine.batches == [6]
    assert [r.text for r in batched] == [r.text for r in alone]
    assert [r.completion_tokens for r in batched] == [r.completion_tokens for r in alone]
    assert all(r.text.startswith("CT of the") for r in batched)
    # each request stops at its own limit, and says why it stopped
    for request, result in zip(requests, batched, strict=True):
        assert result.completion_tokens <= request.max_new_tokens
        assert result.finish_reason == (
            "length" if result.completion_tokens == request.max_new_tokens else "stop"
        )


@pytest.mark.slow
def test_sampling_and_greedy_requests_run_in_separate_batches(engine):
    greedy, sampled = _requests(engine, 2)
    sampled = GenerationRequest(sampled.messages, sampled.images, 8, temperature=1.0, seed=3)
    engine.batches.clear()
    results = engine.generate([greedy, sampled, greedy])
    assert sorted(engine.batches) == [1, 2]
    assert results[0].text == results[2].text


def test_text_only_requests_work(tiny_model_dir):
    engine = TransformersEngine(tiny_model_dir)
    (result,) = engine.generate([GenerationRequest([{"role": "user", "content": "Hello"}], max_new_tokens=3)])
    assert result.completion_tokens <= 3 and result.prompt_tokens > 3


def _writes(engine, text, monkeypatch) -> None:
    """Replace the model's generate by one that writes ``text``, its end of turn and pads: what the
    engine makes of those ids is what predict, evaluate and serve get."""
    import torch

    tokenizer = engine.processor.tokenizer
    written = tokenizer(text)["input_ids"] + tokenizer.convert_tokens_to_ids(["<|im_end|>"] * 3)

    def generate(input_ids, streamer=None, **_):
        new = torch.tensor([written] * input_ids.shape[0])
        if streamer is not None:
            streamer.put(input_ids)
            for column in new.T:
                streamer.put(column)
            streamer.end()
        return torch.cat([input_ids, new], dim=1)

    monkeypatch.setattr(engine.model, "generate", generate)


def test_a_box_the_model_writes_reaches_the_result_and_the_stream_with_its_markers(
    tiny_model_dir, monkeypatch
):
    engine = TransformersEngine(tiny_model_dir)
    grounded = f"The {format_box(GridBox(120, 340, 560, 780), 'region of interest')} is dense."
    _writes(engine, grounded, monkeypatch)
    pieces = []
    request = GenerationRequest([user_message("Where?", images=0)], max_new_tokens=64, on_text=pieces.append)
    (result,) = engine.generate([request])
    assert result.text == grounded and "".join(pieces) == grounded
    assert result.finish_reason == "stop"


def test_a_pixel_family_reads_and_writes_pixels_while_the_engine_speaks_the_grid(
    family_model_dir, monkeypatch
):
    """Qwen2.5-VL sees a 300 x 217 image at 308 x 224: the box in the conversation reaches its prompt
    in those pixels, and the box it writes in them reaches the result and the stream on the grid."""
    from PIL import Image

    engine = TransformersEngine(family_model_dir("qwen2_5_vl"))
    image = engine.prepare(Image.new("RGB", (300, 217), "gray")).image
    assert image.size == (308, 224)
    prompts = []
    render = engine.processor.apply_chat_template

    def recorded(messages, **options):
        prompts.append(render(messages, **options))
        return prompts[-1]

    monkeypatch.setattr(engine.processor, "apply_chat_template", recorded)
    _writes(engine, f"Here: {format_box(GridBox(31, 56, 154, 224), 'lesion')}.", monkeypatch)
    history = [
        user_message("Where is the lesion?", images=1),
        {"role": "assistant", "content": format_box(GridBox(100, 250, 500, 1000), "lesion")},
        user_message("And now?", images=0),
    ]
    pieces = []
    (result,) = engine.generate(
        [GenerationRequest(history, [image], max_new_tokens=64, on_text=pieces.append)]
    )
    assert "<|box_start|>(31,56),(154,224)<|box_end|>" in prompts[0]  # pixels of 308 x 224
    grid = "Here: <|object_ref_start|>lesion<|object_ref_end|><|box_start|>(101,250),(500,1000)<|box_end|>."
    assert result.text == grid and "".join(pieces) == grid


def test_a_checkpoints_repetition_penalty_is_off_as_in_the_other_backends(family_model_dir):
    """Qwen2.5-VL's generation config says 1.05; vLLM's sampling parameters and the API leave no
    penalty, so transformers' greedy text must not carry one either."""
    engine = TransformersEngine(family_model_dir("qwen2_5_vl"))
    assert engine.generation_config.repetition_penalty == 1.05
    request = GenerationRequest([user_message("Hello", images=0)], max_new_tokens=4)
    assert engine._config(request, 4).repetition_penalty == 1.0


def test_min_new_tokens_holds_the_end_of_turn_back_and_ignore_eos_runs_to_the_limit(tiny_model_dir):
    """The random model's first greedy token is made its end of turn, so it stops at once on its own;
    ``min_new_tokens`` (vLLM's min_tokens; max_new_tokens for ignore_eos) must hold that back."""
    import torch

    engine = TransformersEngine(tiny_model_dir)
    hello = [{"role": "user", "content": "Hello"}]
    prompt = engine.processor.apply_chat_template(hello, add_generation_prompt=True)
    with torch.inference_mode():
        logits = engine.model(**engine.processor(text=[prompt], return_tensors="pt")).logits
    engine.generation_config.eos_token_id = [int(logits[0, -1].argmax())]
    natural, held, to_the_limit = engine.generate(
        [
            GenerationRequest(hello, max_new_tokens=12),
            GenerationRequest(hello, max_new_tokens=12, min_new_tokens=5),
            GenerationRequest(hello, max_new_tokens=12, min_new_tokens=12),
        ]
    )
    assert (natural.completion_tokens, natural.finish_reason) == (0, "stop")
    assert held.completion_tokens >= 5
    assert (to_the_limit.completion_tokens, to_the_limit.finish_reason) == (12, "length")
    assert sorted(engine.batches[-3:]) == [1, 1, 1]  # min_new_tokens is one setting per generate call
