"""The advisor: measure a dataset's size and its similarity to the pretraining data, pick the quadrant."""
from zoo.advisor.recommend import Advice, advise

__all__ = ["Advice", "advise"]
