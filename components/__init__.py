"""The steps of the loop as plain, typed functions, in subpackages by stage.

``data`` (posts in, snapshots out), ``features`` (Feast), ``model`` (train, judge, register),
``monitor`` (drift, trends, when to retrain) and ``simulator`` (the feed the demo watches);
``errors`` and ``files`` serve them all. Imports run down that list and never back:
``tests/test_layout.py`` holds the rules.
"""
