"""The OpenAI chat completions protocol as ctscribe speaks it: request, response and stream chunks.

One module for both sides, as vLLM's server keeps its protocol: ``ctscribe serve`` validates each
request against :class:`ChatRequest` and builds its answers from the response classes, and the
``openai`` backend (:mod:`ctscribe.generate.openai_engine`), which predict, evaluate, ``serve
--upstream`` and the web page all call, reads answers with the same field names. Validation is
declared here, once; :func:`request_error` turns pydantic's errors into the one sentence a 400
carries, naming the field.

Beyond OpenAI's fields, a request may carry vLLM's sampling extensions that ctscribe honours:
``skip_special_tokens`` (false: the model's own markup, boxes included), ``min_tokens`` (no end of
turn before that many tokens) and ``ignore_eos`` (generate ``max_tokens`` tokens whatever the model
says, as load tests need). Any other field is ignored, as OpenAI's own optional fields are (``n``,
``presence_penalty``); a sampling extension that changes the output must be declared here and
honoured, never accepted and ignored (:data:`REFUSED_EXTENSIONS` answers 400 for the rest).

ctscribe's additions to a response, in fields OpenAI clients ignore: ``clinical_notice`` and
``boxes`` (:mod:`ctscribe.conversation.boxes`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ctscribe import CLINICAL_NOTICE
from ctscribe.generate.engine import DEFAULT_MAX_NEW_TOKENS

MAX_TOKENS_LIMIT = 2048  # a longer description is a runaway, not a report
# vLLM's sampling extensions that would change the output and that ctscribe's engines do not honour.
REFUSED_EXTENSIONS = (
    "top_k",
    "min_p",
    "repetition_penalty",
    "length_penalty",
    "stop_token_ids",
    "bad_words",
    "use_beam_search",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "structured_outputs",
)


class _Strict(BaseModel):
    """Fields as JSON types, no coercion: ``"no"`` is not a boolean, ``"5"`` is not a number."""

    model_config = ConfigDict(strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str


class ImagePart(_Strict):
    """An image as a base64 ``data:`` URL (the server never fetches a URL); ``image_url`` as OpenAI
    writes it, ``{"url": ...}``, or as the URL alone, which some clients send."""

    type: Literal["image_url"]
    image_url: ImageURL | str

    @property
    def url(self) -> str:
        return self.image_url if isinstance(self.image_url, str) else self.image_url.url


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatRequest(_Strict):
    """A chat completions request. Unknown fields are ignored (OpenAI's optional ones), except the
    output-changing vLLM extensions ctscribe does not honour, which are refused by name."""

    model_config = ConfigDict(strict=True, extra="allow")

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None  # not checked: the server serves one model
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float = Field(default=0.0, ge=0, le=2)  # 0: greedy, reproducible
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # vLLM's extensions, honoured:
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True  # the markup ctscribe returns never has such spaces
    min_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS_LIMIT)
    ignore_eos: bool = False

    @model_validator(mode="after")
    def _no_ignored_extension(self) -> ChatRequest:
        for name in REFUSED_EXTENSIONS:
            if name in (self.model_extra or {}):
                raise ValueError(f"{name} is not supported by this server; leave it out")
        return self

    @property
    def new_tokens(self) -> int:
        """The most tokens to generate: ``max_tokens``, else OpenAI's newer name, else the default."""
        return self.max_tokens or self.max_completion_tokens or DEFAULT_MAX_NEW_TOKENS

    @property
    def least_tokens(self) -> int:
        """The fewest tokens to generate: all of them with ``ignore_eos``, else ``min_tokens``."""
        return self.new_tokens if self.ignore_eos else min(self.min_tokens, self.new_tokens)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


def request_error(errors: Sequence[Mapping]) -> str:
    """The most specific of pydantic's validation ``errors`` as one sentence that names the field
    (``messages.0.content.0.image_url.url: Field required``). A web framework's leading ``body`` in
    the location is dropped."""
    first = max(errors, key=lambda found: len(found["loc"]))  # of a union, the branch that got furthest
    location = [str(part) for part in first["loc"]]
    location = location[1:] if location[:1] == ["body"] else location
    if first["type"] == "json_invalid":
        return "the request body must be JSON"
    if first["type"] in ("model_type", "model_attributes_type", "dict_type") and not location:
        return "the request body must be a JSON object"
    # A union's branch names ("str", "list[...]", "ImageURL"; fields are snake_case) and a part's
    # tag (repeating its field) say nothing to a client.
    where: list[str] = []
    for part in location:
        if part not in ("str", *where[-1:]) and "[" not in part and not part[:1].isupper():
            where.append(part)
    message = first["msg"].removeprefix("Value error, ")
    return f"{'.'.join(where)}: {message}" if where else message


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    clinical_notice: str = CLINICAL_NOTICE
    boxes: list[dict]


def _unset(value: object) -> bool:
    return value is None


class Delta(BaseModel):
    role: Literal["assistant"] | None = Field(default=None, exclude_if=_unset)
    content: str | None = Field(default=None, exclude_if=_unset)


class StreamChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None


class ChatChunk(BaseModel):
    """One server-sent event of a stream. ``usage`` is set only on the extra chunk that
    ``stream_options.include_usage`` asks for, whose ``choices`` is empty (OpenAI's contract, which
    vLLM's benchmark client reads); ``boxes`` only on the chunk with the finish reason."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[StreamChoice]
    usage: Usage | None = Field(default=None, exclude_if=_unset)
    clinical_notice: str | None = Field(default=None, exclude_if=_unset)
    boxes: list[dict] | None = Field(default=None, exclude_if=_unset)

    def event(self) -> str:
        """The chunk as a server-sent event."""
        return f"data: {self.model_dump_json()}\n\n"


DONE_EVENT = "data: [DONE]\n\n"


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: int


class ErrorBody(BaseModel):
    error: ErrorDetail
    clinical_notice: str = CLINICAL_NOTICE
