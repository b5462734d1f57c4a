"""Users, what they write, and how they engage.

Users have interests over tags (a Dirichlet draw: most users care about a few
tags). Interests decide who posts what and who engages with what; the same
``engagement_probability`` will drive simulated clicks in the A/B tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HASHTAGS: dict[str, tuple[str, ...]] = {
    "food": ("#foodie", "#brunch", "#homecooking", "#yummy", "#foodporn"),
    "pets": ("#dogsofinstagram", "#catsofinstagram", "#petlovers", "#furbaby", "#puppy"),
    "selfie": ("#selfie", "#me", "#selfietime", "#ootd", "#smile"),
    "cars": ("#carsofinstagram", "#cargram", "#roadtrip", "#carspotting", "#dreamcar"),
    "fitness": ("#gym", "#fitness", "#workout", "#legday", "#fitfam"),
    "flowers": ("#flowers", "#garden", "#bloom", "#flowerstagram", "#spring"),
    "landscape": ("#nature", "#travel", "#mountains", "#sunset", "#wanderlust"),
    "city": ("#city", "#skyline", "#urban", "#citylights", "#architecture"),
    "meme": ("#meme", "#memes", "#relatable", "#lol", "#newformat"),
    "pixel_art": ("#pixelart", "#8bit", "#retrogaming", "#sprite", "#gamedev"),
}
FILTER_HASHTAGS: dict[str, tuple[str, ...]] = {
    "vintage": ("#vintage", "#filmlook", "#retro"),
    "noir": ("#blackandwhite", "#bnw", "#noir"),
    "neon": ("#neon", "#vaporwave", "#glow"),
    "grain": ("#filmgrain", "#35mm", "#analog"),
}
GENERIC_HASHTAGS = ("#photooftheday", "#instagood", "#love", "#happy", "#weekend", "#mood")
CAPTIONS: dict[str, tuple[str, ...]] = {
    "food": (
        "Brunch goals",
        "Made this tonight",
        "Best pasta in town",
        "Sunday breakfast spread",
        "Tried a new recipe",
    ),
    "pets": ("Look who woke up", "My best friend", "Walkies time", "He stole my spot again", "Nap champion"),
    "selfie": ("New haircut, who dis", "Feeling cute", "Golden hour glow", "Ready for tonight", "Me, again"),
    "cars": ("Just picked her up", "Sunday drive", "Clean after the wash", "Spotted this beauty", "Road trip ready"),
    "fitness": ("Leg day done", "New PR today", "5am club", "No excuses", "Home gym setup"),
    "flowers": ("Spring is here", "From the garden", "Fresh bouquet", "Blooming again", "Found these on my walk"),
    "landscape": ("Views for days", "Made it to the top", "Chasing sunsets", "Lake mornings", "Weekend escape"),
    "city": ("City lights", "Downtown at night", "Skyline views", "Concrete jungle", "Rooftop season"),
    "meme": ("Me every Monday", "Nobody: / Me:", "Tag someone who does this", "Too real", "Why is this me"),
    "pixel_art": ("Made a little sprite", "Day 12 of pixel art", "8-bit me", "Retro vibes", "New character design"),
}
GENERIC_CAPTIONS = ("Good times", "Vibes", "Can't stop thinking about this", "Weekend mood", "Today", "")


@dataclass(frozen=True)
class Users:
    """The simulated population. ``interests`` is (n_users, n_tags); rows sum to 1."""

    ids: list[str]
    tags: list[str]
    interests: np.ndarray  # (U, T)
    activity: np.ndarray  # (U,) relative posting rate
    followers: np.ndarray  # (U,) audience size


def make_users(rng: np.random.Generator, n_users: int, tags: list[str]) -> Users:
    """Draw a population: sparse interests, heavy-tailed activity and follower counts."""
    interests = rng.dirichlet(np.full(len(tags), 0.3), size=n_users)
    activity = rng.lognormal(0.0, 1.0, size=n_users)
    followers = np.maximum(10, rng.lognormal(5.5, 1.2, size=n_users)).astype(np.int64)
    return Users([f"u{k:05d}" for k in range(n_users)], list(tags), interests, activity, followers)


def engagement_probability(interest: np.ndarray) -> np.ndarray:
    """Chance that a user who sees a post engages with it, from their interest in its tag.

    A logistic link: an indifferent user (interest 0) engages about 4.7% of the time,
    one whose interest is 0.5 about 73%.
    """
    return 1.0 / (1.0 + np.exp(3.0 - 8.0 * interest))


def pick_authors(rng: np.random.Generator, users: Users, tag_index: np.ndarray) -> np.ndarray:
    """An author for each post: users post what they are interested in, the active ones more."""
    authors = np.empty(len(tag_index), dtype=np.int64)
    for t in np.unique(tag_index):
        weight = users.activity * users.interests[:, t]
        where = np.flatnonzero(tag_index == t)
        authors[where] = rng.choice(len(users.ids), size=len(where), p=weight / weight.sum())
    return authors


def engagement(rng: np.random.Generator, users: Users, author: int, tag: int) -> dict[str, int]:
    """Views, likes, comments and shares one post collects.

    Views follow the author's audience; each viewer likes with the population's
    ``engagement_probability`` for the tag, scaled by the post's quality.
    """
    views = int(rng.poisson(users.followers[author] * rng.uniform(0.1, 0.5)))
    appetite = float(engagement_probability(users.interests[:, tag]).mean())
    likes = int(rng.binomial(views, min(1.0, appetite * rng.beta(2, 2) * 2)))
    return {
        "views": views,
        "likes": likes,
        "comments": int(rng.binomial(likes, 0.08)),
        "shares": int(rng.binomial(likes, 0.04)),
    }


def write_caption(rng: np.random.Generator, look: str, style: str | None) -> tuple[str, list[str]]:
    """A caption and hashtags for a post: mostly about its content, sometimes off-topic."""
    caption = str(rng.choice(CAPTIONS[look])) if rng.random() < 0.8 else str(rng.choice(GENERIC_CAPTIONS))
    tags = list(rng.choice(HASHTAGS[look], size=int(rng.integers(0, 4)), replace=False))
    if rng.random() < 0.15:  # off-topic hashtag: captions are a noisy signal, not a label
        other = str(rng.choice([k for k in HASHTAGS if k != look]))
        tags.append(str(rng.choice(HASHTAGS[other])))
    if style and rng.random() < 0.6:
        tags.append(str(rng.choice(FILTER_HASHTAGS[style])))
    tags += list(rng.choice(GENERIC_HASHTAGS, size=int(rng.integers(0, 3)), replace=False))
    return caption, [str(t) for t in tags]
