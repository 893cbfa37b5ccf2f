"""The `textxfer` command line."""
