"""Speed and responsiveness benchmarks; each judges its goals (benchmarks/goals.py)."""
