"""serve: the OpenAI-compatible API and the clinicians' web page, in front of one batching engine."""
