"""Built-in quantizers."""
