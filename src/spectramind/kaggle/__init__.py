"""Delivery to Kaggle: the offline bundle of wheels and its notebook, and the dependency closure behind it."""
