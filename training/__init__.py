"""Model training, walk-forward backtest, calibration, explanations and the MLflow registry."""
