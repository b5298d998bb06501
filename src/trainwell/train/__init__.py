"""Training: optimisers and schedules, the loop, run directories and the train/evaluate/predict API."""
