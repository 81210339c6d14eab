"""Built-in caches."""
