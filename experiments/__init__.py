"""Entry point, CLI and YAML configs."""
