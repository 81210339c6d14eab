"""Built-in gates."""
