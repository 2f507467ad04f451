"""Model training, backtest, calibration and the MLflow registry (issue 4)."""
