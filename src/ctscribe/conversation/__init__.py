"""The conversation contract every step shares: what a model is asked, how a record holds it, the text
and token ids it becomes, and the grounding boxes it may contain.

Prepare writes conversations, training renders and tokenises them, predict/evaluate/serve ask the
model in the same words and read its answers back. If any of these kept its own copy of the format
(the ``<image>`` placeholder, a prompt sentence, a token id), a change in one place would silently
train a model on one format and query it in another. So each piece is written once, here, and every
step imports it; nothing here imports training, generation, the CLI or the test fixtures.

- :mod:`~ctscribe.conversation.prompts`: the prompt pools (English, Chinese; held-out ones for the
  test split), the per-row choice, and the default prompt predict and serve ask.
- :mod:`~ctscribe.conversation.records`: the record format prepare writes (LLaMA-Factory's sharegpt
  form and its ``dataset_info.json``), the ``<image>`` placeholder, and a record's turns as inference
  messages (:func:`~ctscribe.conversation.records.record_prompt`,
  :func:`~ctscribe.conversation.records.user_message`).
- :mod:`~ctscribe.conversation.template`: a conversation through its model family's chat template,
  with the answer spans the loss is taken on, and the special tokens' ids read from the tokenizer.
- :mod:`~ctscribe.conversation.boxes`: the grounding format (boxes on a 0-1000 grid) written, parsed
  and stripped.
"""
