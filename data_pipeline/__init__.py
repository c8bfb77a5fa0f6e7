"""data_pipeline: everything before a batch.

DICOM decode, report parsing, tokenisation, TFRecord write/index/read, Grain sources and
transforms, converters (MIMIC-CXR layout, generic manifests) and the synthetic phantom data set.
Record format: docs/data_format.md and data_pipeline/record_spec.py.
"""
