"""Posts in, snapshots out: where posts come from, which images we keep, the content-addressed store.

Also the other records the loop keeps as data: the post contract's schemas (``posts``) and
the prediction log (``predlog``). Nothing here loads a model.
"""
