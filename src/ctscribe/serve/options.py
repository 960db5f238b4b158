"""What ``ctscribe serve`` can be told, each default written once.

The serve command in cli.py takes every default and help text from these fields, and the server
(:func:`ctscribe.serve.app.build_server`) reads the same object, so a default never exists twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServeOptions:
    """Where the server listens and how much work it takes on at once."""

    host: str = field(
        default="127.0.0.1", metadata={"help": "Address to bind; the default answers this machine only."}
    )
    port: int = field(default=8000, metadata={"help": "TCP port."})
    max_batch: int = field(default=8, metadata={"help": "Most requests generated together."})
    max_queue: int = field(
        default=64, metadata={"help": "Most requests waiting or running; more get 503 and a retry hint."}
    )
    max_image_mb: float = field(default=20, metadata={"help": "Largest image upload, in MB."})
    web: bool = field(default=True, metadata={"help": "Serve the web page at / too."})

    @property
    def max_image_bytes(self) -> int:
        return int(self.max_image_mb * 2**20)

    @property
    def page_host(self) -> str:
        """Where the page reaches the API in this process: loopback when bound to every address."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
