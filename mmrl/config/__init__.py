"""The config room: the schema of every key the library reads (`schema.py`, with defaults) and the
type checks shared by the layers above (`checks.py`). Imports nothing from mmrl above it."""
