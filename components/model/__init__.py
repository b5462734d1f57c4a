"""The tagger and its life: preprocess, train, predict, evaluate, gate, register, and retrain as one use-case.

``retrain`` composes the others: train a candidate, review it beside the champion, register
what passes the gate and place its alias.
"""
