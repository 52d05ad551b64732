"""The model registry: models, versions, their lifecycle and aliases."""
