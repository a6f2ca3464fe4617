"""Checks: each a small function from collected evidence to a CheckResult."""
