"""Recipes: the schema of every key, loading YAML with overrides, validation, comparison."""
