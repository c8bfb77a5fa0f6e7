"""Downstream protocols (BenchX-style): tasks, subsets, resumable runs, result tables.

`tasks` (the registry), `provenance` (what a checkpoint is), `results` (the resumable JSON and
its markdown table), `run` (scores a checkpoint on a task with the existing evaluators),
`leaderboard` (methods x tasks over many result files). Entry points: experiments/downstream.py,
experiments/leaderboard.py; docs/downstream.md.
"""
