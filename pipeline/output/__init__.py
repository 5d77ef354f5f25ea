"""The output folder: its files and the writer of shards and journals (`writer.py`),
the folder's bookkeeping and recovery (`folder.py`), what it holds and paid
(`books.py`), upgrades of older folders (`upgrade.py`), export (`export.py`), and a
folder in a bucket: the local mirror and the bucket lock (`mirror.py`,
`bucketlock.py`)."""
