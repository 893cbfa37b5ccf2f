"""What a run leaves: the run directory, plots, the HTML report, the model card, the Hub push."""
