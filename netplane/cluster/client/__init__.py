"""kubectl-shaped client: commands, tables, templates, `up`/`down`."""
