"""``qgn reproduce``: the paper's tables as grids of ordinary training runs, aggregated beside the paper's numbers."""
