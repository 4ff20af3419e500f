"""Finance example apps: ``python -m apps.finance.stock_movement``."""
