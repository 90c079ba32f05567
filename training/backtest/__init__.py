"""Backtests of retry policies: off-policy estimates, ground truth, reports.

See docs/backtesting.md.
"""
