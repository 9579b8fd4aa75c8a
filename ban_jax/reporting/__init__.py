"""Reporting: results.json, results.md, plots, and the paper's numbers to compare with."""
