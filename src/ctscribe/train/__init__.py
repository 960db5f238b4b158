"""train: fine-tune a base model on prepared data. ``native`` is the default engine (transformers +
PEFT + accelerate); ``data`` builds the samples and loss masks, ``model`` the trainable model."""
