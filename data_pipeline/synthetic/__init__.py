"""Synthetic chest-radiograph phantoms with findings at known places, reports, and MIMIC-layout DICOM trees."""
