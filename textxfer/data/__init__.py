"""Labelled data in: readers of files, folders, the Hub and in-memory tables; labels, sampling, splits."""
