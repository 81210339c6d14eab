"""Models as data: families, loading (built-in tiny models, checkpoints, pipelines), sampling,
conditioning, resolution, and the shipped reference models.

Imports: `core` and `measure` only.
"""
