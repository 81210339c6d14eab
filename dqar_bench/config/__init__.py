"""What a run is asked to do: the validated suite, and each case's identity.

Imports: `core`, `measure`, `model`, `strategy`.
"""
