"""The hybrid app: a local and a cloud model side by side (terminal chat, batch compare,
routing, web app)."""
