"""A small, real, trained reference DiT (pixel-space, class-conditional, sklearn digits) and the
digit classifier that scores it, so acceleration strategies can be measured on a CPU in seconds
against a model that actually learned something.

Import `dqar_bench.model.reference.load` for the weights and `dqar_bench.model.reference.classifier` for the
metrics; this package itself imports nothing heavy.
"""
