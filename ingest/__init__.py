"""Ingest: DICOM echo clips and a CMR label table in, de-identified WebDataset shards out (and the synthetic cohort)."""
