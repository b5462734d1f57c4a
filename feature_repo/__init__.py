"""The Feast repository of trendloop: entities, sources, feature views and the store configurations.

``definitions.py`` holds the objects; ``feature_store.yaml`` is the embedded default
(file offline store, SQLite online store) and ``feature_store.redis.yaml`` the cluster
variant. Relative paths in both resolve against the repo path trendloop passes to
Feast: ``<home>/features`` (``[features] data_dir``), where the source files live too.
"""
