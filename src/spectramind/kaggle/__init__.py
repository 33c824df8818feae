"""Delivery to Kaggle: the offline dataset (wheels, exported model) and its two notebooks, the submission
notebook's time-limited work (`kaggle submit`), and the dependency closure behind the wheels."""
