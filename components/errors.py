"""The errors trendloop raises on purpose: each carries a message fit for one line."""


class TrendloopError(Exception):
    """A failure the user can act on; the CLI prints its message and exits non-zero."""


class ConfigError(TrendloopError):
    """A setting, argument or schedule that cannot work."""


class SourceError(TrendloopError):
    """An ingestion source that cannot be read at all (missing, unknown layout, bad manifest)."""


class SnapshotError(TrendloopError):
    """A snapshot that does not exist, is ambiguous, or no longer matches its content hash."""


class DriftError(TrendloopError):
    """A drift check that cannot run: a window too small, no champion, no traffic logged."""


class QuietWindow(DriftError):
    """A window with too little traffic to test (none logged, or fewer posts than a check needs): not drift."""


class LabelingError(TrendloopError):
    """Label Studio cannot be reached or refused a request; what was queued locally stays queued."""


class FeatureError(TrendloopError):
    """The feature store cannot serve a request: unknown feature, bad entity frame, a version's service clash."""
