"""Run configs: one `get_config(arg)` file per method (convirt, gloria, mgca, lovt, local_mi, place,
mlip, lrclr, and the released-checkpoint towers biovil and open_clip), plus demo.py (the laptop
demo) and from_run.py (a run directory's own config.json); each returns an ml_collections
ConfigDict of the schema in mmrl/config (base.py re-exports it). Passed as
`--config=experiments/configs/<name>.py[:arg]`; each file's docstring says how to run it and what
to expect."""
