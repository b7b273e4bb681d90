"""semioflow stage functions: plain Python over Parquet tables and media files.

Nothing in this package imports Prefect; orchestration lives in ``flows/``.
"""

__version__ = "0.1.0"
