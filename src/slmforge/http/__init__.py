"""What the inference server, the jobs service and the app share over HTTP.

binding.py (bind a socket first, free ports), host.py (uvicorn without touching process-wide
logging, a server in a thread), guard.py (the typed ASGI middleware: API keys, body limit,
request counting), auth.py (hashed keys, constant-time compare), errors.py (OpenAI error
objects for every failure), ids.py (OpenAI-style object ids). Nothing here knows about models
or jobs: `serve`, `jobs` and `app` sit above it.
"""
