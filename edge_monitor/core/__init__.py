"""The contract the trainer may import, and nothing else of edge_monitor: audio and
resampling, preprocessing, embedders, neighbour search, scoring, banks, detectors, bundles,
metrics and DCASE CSVs, errors and atomic writes. What is evaluated is what runs.
"""
