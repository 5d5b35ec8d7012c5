"""The OpenAI-compatible server for language-model artifacts (`<digest>/genai/`):
`/v1/models`, `/v1/completions`, `/v1/chat/completions` (also under `/openai/v1/`),
batching (static, at batch boundaries) through one onnxruntime-genai Engine owned by one thread
(engine.py), vLLM-named metrics (metrics.py). `ondeck-server serve` hands an LLM
artifact to `server.run`. See docs/llm.md.
"""
