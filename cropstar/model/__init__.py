"""Trained models as one thing that training writes and inference and the service read: the
architecture, the artifact folder (``model.safetensors`` + the model card ``model.json``; DESIGN.md,
"Data contracts"), the packaged default model and the model registry."""
