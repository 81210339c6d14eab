"""The learned reuse policy: features, the MLP, traces to learn from, and training.

`features` says what the policy sees (the same code when tracing and when deciding),
`model` is the MLP and its safetensors file, `trace` measures when reuse is safe,
`train` fits the MLP to a trace. The gate that uses it is `strategies/gates/policy.py`.
"""
