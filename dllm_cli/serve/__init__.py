"""`dllm serve`: one process keeps a model warm and answers OpenAI-compatible HTTP.

`wire` (the request and reply formats, pure), `worker` (one generation at a time from a bounded
queue), `app` (the FastAPI routes and guards), `runner` (bind, load, discovery file, uvicorn),
`speed` (cold vs warm `dllm code`, measured). FastAPI and uvicorn are the optional extra
`dllm-cli[serve]`; nothing here is imported by `dllm --help`. Must not: import torch at module
level (only the engine does), or read and write files on a request's behalf.
"""
