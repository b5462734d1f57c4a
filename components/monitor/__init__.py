"""Watching served traffic: drift against the training data, emerging trends, and when to retrain.

``checks`` is the use-case (check a window, log it, plan a retrain); ``batch`` scores stored
posts as traffic before serving exists.
"""
