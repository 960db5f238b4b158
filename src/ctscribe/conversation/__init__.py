"""The conversation contract every step shares: prompts, record format, rendering, grounding boxes."""
