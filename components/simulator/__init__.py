"""A deterministic simulator of the social feed trendloop ingests (see ``feed.simulate``)."""
