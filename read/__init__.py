"""The read path from shards to model inputs: the one DALI graph (reader, video decoder, grey,
resize, windows, augmentation) and the per-rank `ClipLoader` over it, with their config.

It sits above the model package (it feeds the model's input contract) and below `train` and
`eval`, which both read through it and never import each other.
"""
