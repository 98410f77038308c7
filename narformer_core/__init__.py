"""NAR-Former Explorer: architecture graphs, the NAR-Former tokenizer and model, predictors,
latency tools and search. No Streamlit in here: the app only draws what this package computes."""
__version__ = "0.1.0"
