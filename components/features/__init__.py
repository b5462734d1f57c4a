"""The loop's features in Feast: the store adapter, the feature tables, keeping them in step, side inputs.

``store`` opens Feast and reads and writes its sources; ``engineering`` computes the tables;
``sync`` writes what the store lacks; ``captions`` embeds caption text; ``side`` turns stored
features into a fusion tagger's inputs.
"""
