"""The transformer both model families share: attention backends, positions, the one forward with its
self-attention masks (``model``), loading, the T5 text conditioning and the delay pattern."""
