"""``lightning embed``: a corpus -> Parquet shards of embeddings through ``Trainer.predict``, and its 2D map."""
