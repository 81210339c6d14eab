"""Training of the shipped reference models (digits-dit, digits-flow): tools, never imported by dqar_bench."""
