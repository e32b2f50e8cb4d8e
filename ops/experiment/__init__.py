"""Experiments: the streaming runner, the offline engine, references, tuning, A/B statistics, the
devices' read-back and the report (results, tables, markdown, figures)."""
