"""zoo: from a folder of labelled images to a served, edge-ready image classifier."""
