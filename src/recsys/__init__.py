"""recsys: the e-commerce recommender lab kit (REES46 events -> MXNet MF model -> endpoint -> SQL)."""

__version__ = "0.1.0"
