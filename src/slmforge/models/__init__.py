"""Models: loading from a hub id or folder (`load`), chat formats and stops (`chat`), tiny
pretrained models of real architectures built offline (`tiny`, trained on `corpus`).

Submodules import torch/transformers lazily, so importing this package stays cheap.
"""
