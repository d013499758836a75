"""Agents: `agents.toml` (config), the JSON payload, and the HTTP clients per agent kind."""
