"""Language models: a Hugging Face causal-LM folder → onnxruntime-genai's builder →
a gate against transformers on the same folder → an `llm` artifact (`<digest>/genai/`
as the builder wrote it, plus manifest.json). See docs/llm.md.

`pipeline.applies(request)` says whether a ConvertRequest is for this lane;
`pipeline.convert_llm` runs it. torch and transformers are imported only by the gate.
"""
