"""Multi-modality attention network for stock movement prediction: real prices, synthetic posts
(``python -m apps.finance.stock_movement``)."""
