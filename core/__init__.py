"""Pure CoDA algorithm core: features, incremental means, KNN merge, batching, lifecycle, models.

Nothing here imports Kafka, Faust, Qdrant or SQLite; a test scans imports to keep it so.
"""
